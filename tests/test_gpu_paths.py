"""The GPU fast paths against the plain ones, on a CUDA device (skipped without one: conftest.py).

On the CPU these paths are either off (bf16 autocast, channels-last, fused Adam are CUDA-only in the
trainer) or tested elsewhere (the cache's batches, test_data_cache.py). Here the same data and the same
initial weights go through: the CPU in fp32, the GPU in fp32, and the GPU with every fast path on; the
per-epoch loss means must agree within what the arithmetic allows (fp32 reordering; bf16's 8-bit
mantissa), and the device-side batches must equal the CPU's.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from _runs import smoke_cache, smoke_config, smoke_index, with_classes  # noqa: F401

from kdcicam.core.config import ModelConfig
from kdcicam.data import cache as C
from kdcicam.data.transforms import TestTransform, train_transform
from kdcicam.model.factory import build_model
from kdcicam.training.recipes import TeacherSet, recipe_for
from kdcicam.training.trainer import fit

pytestmark = pytest.mark.gpu
CPU = torch.device("cpu")
CUDA = torch.device("cuda")
TINY = ModelConfig(width=0.0625, output_stride=4, nonlocal_blocks=2, num_classes=2)


def _cfg(index, role: str, *, amp: bool, channels_last: bool):
    cfg = with_classes(smoke_config(**{"train.batch_size": 4, "train.lr": 0.002, "train.epochs": 3}), index)
    # the role is set after validation: a distilled config here has random teachers, not teacher runs
    return dataclasses.replace(cfg, model=dataclasses.replace(TINY, num_classes=cfg.model.num_classes),
                               loss=dataclasses.replace(cfg.loss, role=role),
                               train=dataclasses.replace(cfg.train, amp=amp, channels_last=channels_last))


def _epoch_losses(cfg, index, device, tmp_path):
    torch.manual_seed(0)  # the same initial weights on every device (built on the CPU, then moved)
    model = build_model(cfg.model, cfg.variant, input_size=cfg.data.crop).to(device)
    recipe = recipe_for(cfg.loss, cfg.variant)
    teachers = None
    if recipe.teachers:
        teachers = TeacherSet(*(build_model(cfg.model, cfg.variant, input_size=cfg.data.crop).to(device).eval()
                                for _ in range(2)))
    geometry, augment = C.split_train_transform(train_transform(cfg.data.train_resize, cfg.data.crop, False))
    frames = C.build_cache(index.train[::4][:16], geometry, device)  # every class (the split is sorted by class)
    data = C.CachedTrainSet(frames, augment)
    epochs = {}
    fit(model, recipe, cfg, data, tmp_path, device, teachers=teachers,
        validate=lambda m: {"top1_loc": 0.0, "gt_known_loc": 0.0, "top1_cls": 0.0},
        on_epoch=lambda log, val: epochs.__setitem__(log.epoch, log.terms))
    return epochs


@pytest.mark.parametrize("role", ["student", "loc_teacher", "distilled"])
def test_gpu_fast_path_losses_match_the_cpu_fp32_losses(smoke_cache, tmp_path, role):  # noqa: F811
    index = smoke_index(smoke_cache)
    plain = _cfg(index, role, amp=False, channels_last=False)
    fast_cfg = _cfg(index, role, amp=True, channels_last=True)
    cpu = _epoch_losses(plain, index, CPU, tmp_path / "cpu")
    fp32 = _epoch_losses(plain, index, CUDA, tmp_path / "fp32")
    fast = _epoch_losses(fast_cfg, index, CUDA, tmp_path / "fast")
    assert cpu.keys() == fp32.keys() == fast.keys()
    for name, value in cpu[0].items():  # the first epoch: the same weights have seen the same batches
        assert fp32[0][name] == pytest.approx(value, rel=1e-2, abs=1e-3), name
        assert fast[0][name] == pytest.approx(value, rel=5e-2, abs=1e-2), name
    for epoch in cpu:  # later epochs: rounding differences steer Adam apart; same scale, finite
        for name, value in cpu[epoch].items():
            assert fast[epoch][name] == pytest.approx(value, rel=0.3, abs=0.05), (epoch, name)


def test_device_batches_equal_the_cpu_batches(smoke_cache):  # noqa: F811
    index = smoke_index(smoke_cache)
    samples = index.train[:10]
    geometry, augment = C.split_train_transform(train_transform(36, 32, False))
    on_cpu = C.build_cache(samples, geometry, CPU)
    on_gpu = C.build_cache(samples, geometry, CUDA)
    assert torch.equal(on_cpu.images, on_gpu.images.cpu())
    cpu_batches, gpu_batches = (list(C.CachedBatches(cache, range(10), 4, device, augment=augment, seed=3, epoch=1,
                                                      channels_last=device.type == "cuda"))
                                for cache, device in ((on_cpu, CPU), (on_gpu, CUDA)))
    assert len(cpu_batches) == len(gpu_batches) == 3
    for a, b in zip(cpu_batches, gpu_batches):
        assert torch.equal(a["label"], b["label"].cpu())
        torch.testing.assert_close(a["image"], b["image"].cpu(), rtol=0, atol=1e-6)
    test_cpu = C.build_cache(samples, TestTransform(resize=36, crop=32), CPU)
    test_gpu = C.build_cache(samples, TestTransform(resize=36, crop=32), CUDA)
    for a, b in zip(C.test_batches(test_cpu, 4, CPU), C.test_batches(test_gpu, 4, CUDA)):
        torch.testing.assert_close(a["image"], b["image"].cpu(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("role", ["student", "distilled"])
def test_cuda_graph_training_gives_the_eager_losses(smoke_cache, tmp_path, role):  # noqa: F811
    # train.compile = "reduce-overhead": Inductor's kernels replayed as CUDA graphs; the same maths
    index = smoke_index(smoke_cache)
    eager = _cfg(index, role, amp=True, channels_last=True)
    graphs = dataclasses.replace(eager, train=dataclasses.replace(eager.train, compile="reduce-overhead"))
    want = _epoch_losses(eager, index, CUDA, tmp_path / "eager")
    got = _epoch_losses(graphs, index, CUDA, tmp_path / "graphs")
    assert got.keys() == want.keys()
    for name, value in want[0].items():
        assert got[0][name] == pytest.approx(value, rel=2e-2, abs=5e-3), name
    for epoch in want:
        for name, value in want[epoch].items():
            assert got[epoch][name] == pytest.approx(value, rel=0.3, abs=0.05), (epoch, name)
