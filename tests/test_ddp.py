"""One run on many processes (kdcicam.training.distributed, fit(..., dist=...)) on CPU with the gloo backend.

What these tests prove:

- the data shard of a rank (hand-worked orders) and the ε draws of its slice equal one process's;
- two gloo ranks training a tiny CI-CAM for 3 steps (global batch 8, 4 per rank) end with the weights,
  BatchNorm statistics and causal context pool of one process trained on the same 8-image batches,
  both pool variants (reference: correct-only, updated after enhancing; paper: every sample, updated
  first, with the loc teacher's extra fore/back passes through DDP) and the distilled student with
  per-sample ε (each KD term the mean over the global batch's samples that drew it: subset_means), with
  the same logged epoch means; the ranks hold identical states;
- without the pool's all-reduce (the negative control) the ranks' pools differ from each other and
  from one process's, so the comparison above can fail;
- end to end: ``torchrun --nproc_per_node 2 -m kdcicam train --profile smoke`` on CPU finishes, stores
  exactly one run and its checkpoints, with the 1-process run's loss terms and test metrics, both variants.

Float32 (the torchrun test): two processes are one process's training up to rounding, and rounding is
all that separates them, but training does not keep rounding small. Two processes sum in another order
(~1e-7); where a pre-activation lies within that of 0, a LeakyReLU of the backbone takes the other slope
(1 vs 0.2) for it, and that gradient entry changes by 80 %. Measured on the smoke profile, variant
reference: at epoch 1, step 2, one element flipped and the step's gradients moved by up to 2 % (the
float64 gradients of the same two weight sets differ by 2e-5); by step 4, 10-50 flip per layer and the
two trainings have drifted apart. One process does the same: moving one weight tensor by one
float32 step changes the epoch means after 2 epochs (smoke, lr 2e-3) by 2e-8 to 4e-3, depending on which
tensor and which direction, in either variant (reference: 1.8e-4; paper: 3.9e-3); the two processes
measured 1e-3 under reference and 6e-8 under paper, which is which tensor happened to cross a kink,
not the variant. The two-process step itself is exact: its gradients, recomputed by one process from the
two-process weights, agree to 5e-6. The test trains at lr 2e-4, where the same one-step moves change
the means by at most 3.4e-5, and compares them at 1e-3.

Tolerance: the in-process comparison runs in float64, where the only differences between one and two
processes are summation order (gradients of a sum over two halves, BatchNorm statistics from two
partial sums), ~1e-16 relative; Adam divides each gradient by its RMS + 1e-8 and so can magnify the
rounding of a near-zero gradient, and the pool's contributions are summed in float32 (pool_contributions)
(~1e-7). Measured worst case: 2e-7 of a tensor's largest value; the unreduced control differs by ~4e-3.
1e-5 relative (to each tensor's largest magnitude) sits two orders of magnitude from both.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _ddp import SCENARIOS, rank_main, train
from _runs import checkpoint, kdcicam_env, smoke_cache  # noqa: F401

from kdcicam.core.errors import ConfigError
from kdcicam.training.distributed import (
    SyncBatchNorm2d,
    convert_sync_batchnorm,
    local_batch_size,
    shard_order,
    world_from_env,
)
from kdcicam.training.epoch import _combine_ranks
from kdcicam.training.recipes import Recipe, draw_epsilon
from kdcicam.training.streams import skip_draws
from kdcicam.training.subset_means import global_subset_means, rank_weight

RTOL = 1e-5


# ------------------------------------------------------------------------------ pure pieces

def test_shard_order_gives_each_rank_its_contiguous_half_of_every_global_batch():
    order = [7, 3, 5, 1, 0, 2, 6, 4]  # two global batches of B = 4: [7, 3, 5, 1], [0, 2, 6, 4]
    assert shard_order(order, 4, 0, 2) == [7, 3, 0, 2]
    assert shard_order(order, 4, 1, 2) == [5, 1, 6, 4]
    # every image once, and rank r's k-th batch of 2 is the r-th half of global batch k
    assert sorted(shard_order(order, 4, 0, 2) + shard_order(order, 4, 1, 2)) == sorted(order)


def test_shard_order_splits_a_lone_short_batch_as_evenly_as_it_can():
    order = [4, 0, 3, 1, 2]  # 5 images < B = 8: one batch; parts [0:2], [2:5] (r*c//N with c = 5)
    assert shard_order(order, 8, 0, 2) == [4, 0]
    assert shard_order(order, 8, 1, 2) == [3, 1, 2]
    assert shard_order([9], 8, 0, 1) == [9]


def test_local_batch_size_needs_a_multiple_of_the_processes():
    assert local_batch_size(8, 2) == 4
    with pytest.raises(ConfigError, match="train.batch_size = 6: must be a multiple of the 4 processes"):
        local_batch_size(6, 4)


def test_world_from_env_reads_torchrun_and_ignores_one_process():
    assert world_from_env({}) is None
    assert world_from_env({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}) is None
    assert world_from_env({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}) == (1, 2, 1)
    with pytest.raises(ConfigError, match="RANK = 2, WORLD_SIZE = 2"):
        world_from_env({"RANK": "2", "WORLD_SIZE": "2", "LOCAL_RANK": "0"})


@pytest.mark.parametrize("batch", [2, 6, 8, 64])
def test_each_rank_draws_the_epsilon_of_its_slice_of_the_global_batch(batch):
    recipe = Recipe("distilled", "reference", rho=0.0, weights=(("stu", 0.2),), teachers=("cls", "loc"),
                    epsilon="sample")  # ε in {0, 1, 2}, one per sample
    whole = draw_epsilon(batch, recipe, torch.Generator().manual_seed(5))  # (B,) one process
    half = batch // 2
    parts = []
    for rank in range(2):
        g = torch.Generator().manual_seed(5)
        skip_draws(g, rank * half)
        parts.append(draw_epsilon(half, recipe, g))
    assert torch.equal(torch.cat(parts), whole)
    unskipped = draw_epsilon(half, recipe, torch.Generator().manual_seed(5))
    assert torch.equal(unskipped, whole[:half])  # rank 1 without the skip would repeat rank 0's draws


def test_rank_weights_turn_the_ranks_subset_means_into_the_global_batchs():
    # ε = 1 drawn by 1 sample of rank 0 (loss 0.4) and by 3 of rank 1 (losses 0.2, 0.6, 1.0; mean 0.6):
    # one process averages the 4: (0.4 + 0.2 + 0.6 + 1.0) / 4 = 0.55
    w0, w1 = rank_weight(1, 4, 2), rank_weight(3, 4, 2)
    assert (w0, w1) == (0.5, 1.5)
    assert (w0 * 0.4 + w1 * 0.6) / 2 == pytest.approx(0.55)  # DDP's average over the ranks
    assert rank_weight(0, 4, 2) == 0.0 and rank_weight(0, 0, 2) == 0.0
    # the logged terms, combined over the ranks as the trainer does (by batch size): the same 0.55
    (_, combined, images), = _combine_ranks([[(0, {"ld": w0 * 0.4}, 4)], [(0, {"ld": w1 * 0.6}, 4)]])
    assert combined["ld"] == pytest.approx(0.55) and images == 8


def test_global_subset_means_without_a_group_leave_the_terms_alone():
    terms = {"ld": torch.tensor(0.3)}
    assert global_subset_means(terms, {"ld": 2, "ad": 0}, torch.device("cpu"), zero=lambda: torch.tensor(0.0)) is terms


def test_sync_batchnorm_without_a_group_is_batchnorm_and_keeps_the_state_dict():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4))
    keys = set(net.state_dict())
    x = torch.randn(5, 3, 6, 6)
    want = net(x)
    convert_sync_batchnorm(net, torch.device("cpu"))
    assert isinstance(net[1], SyncBatchNorm2d) and set(net.state_dict()) == keys
    net.load_state_dict(net.state_dict())
    torch.testing.assert_close(net(x), want, rtol=0, atol=0)  # same kernel: identical outputs


# ------------------------------------------------------------------------------ two gloo ranks

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Every scenario of _ddp.SCENARIOS on 2 gloo ranks (spawned) and on one process."""
    root = tmp_path_factory.mktemp("ddp")
    torch.multiprocessing.spawn(rank_main, args=(2, _free_port(), str(root / "two")), nprocs=2)
    dtype = torch.get_default_dtype()
    try:
        for name, (role, variant, _, sets) in SCENARIOS.items():
            train(root / "one" / name, role, variant, sets=sets)
    finally:
        torch.set_default_dtype(dtype)
    return root


def _states(root: Path, name: str) -> tuple[dict, dict, dict]:
    load = lambda p: torch.load(p, weights_only=True)  # noqa: E731
    return (load(root / "two" / name / "rank0.pt"), load(root / "two" / name / "rank1.pt"),
            load(root / "one" / name / "rank0.pt"))


@pytest.mark.slow
@pytest.mark.xdist_group("ddp-trained")  # the `trained` fixture once, on one pytest-xdist worker
@pytest.mark.parametrize("name", ["student-reference", "loc_teacher-paper", "distilled-reference"])
def test_two_ranks_end_where_one_process_on_the_combined_batches_ends(trained, name):
    rank0, rank1, one = _states(trained, name)
    assert rank0.keys() == rank1.keys() == one.keys()
    for key in one:
        assert torch.equal(rank0[key], rank1[key]), f"{key} differs between the ranks"
    q = one["context_pool.q"]
    assert q.abs().sum() > 0  # the pool received contributions: the comparison is not of two empty pools
    worst = {k: _rel(rank0[k], one[k]) for k in one if one[k].is_floating_point()}
    assert max(worst.values()) < RTOL, sorted(worst.items(), key=lambda kv: kv[1])[-3:]
    assert torch.equal(rank0["backbone.nonlocal_blocks.pool4.bn.num_batches_tracked"],
                       one["backbone.nonlocal_blocks.pool4.bn.num_batches_tracked"])  # 3 steps each
    # the logged epoch means are the global batches' (distilled: each KD term over all its selected samples)
    terms = [json.loads((trained / where / name / f"terms{r}.json").read_text()) for where, r in
             (("two", 0), ("two", 1), ("one", 0))]
    assert terms[0] == terms[1] and terms[0].keys() == terms[2].keys()
    for term, value in terms[2].items():
        assert terms[0][term] == pytest.approx(value, rel=RTOL), term
    # rank 0 wrote the one checkpoint, holding what it trained
    saved = torch.load(trained / "two" / name / "run" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(saved[k], rank0[k]) for k in saved)


@pytest.mark.slow
@pytest.mark.xdist_group("ddp-trained")
def test_without_the_pool_all_reduce_the_ranks_pools_drift_apart(trained):
    rank0, rank1, one = _states(trained, "student-reference-unreduced")
    assert not torch.equal(rank0["context_pool.q"], rank1["context_pool.q"])
    assert _rel(rank0["context_pool.q"], one["context_pool.q"]) > 100 * RTOL


# ------------------------------------------------------------------------------ torchrun, end to end

def _train(where: Path, cache: Path, nproc: int, variant: str) -> subprocess.CompletedProcess:
    args = ["train", "--profile", "smoke", "--device", "cpu", "--deterministic", "--variant", variant,
            # lr / 10: float32 training drifts apart from a rounding difference (the module docstring); at the
            # smoke lr of 2e-3 a single weight moved by one float32 step changes the epoch means by up to 4e-3
            "--set", "train.epochs=2", "--set", "train.lr=0.0002",
            "--db", f"sqlite:///{where / 'runs.db'}", "--artifacts", str(where / "runs"), "--quiet"]
    launcher = [sys.executable, "-m", "kdcicam"] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", "kdcicam"]
    env = {**kdcicam_env(cache), "KDCICAM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(launcher + args, cwd=where, env=env, text=True, capture_output=True, timeout=600)


def _stored(db: Path) -> dict:
    con = sqlite3.connect(db)
    try:
        return {"runs": con.execute("SELECT id, status FROM runs").fetchall(),
                "train": dict(((e, n), v) for e, n, v in con.execute(
                    "SELECT epoch, name, value FROM epoch_metrics WHERE split = 'train' AND name != 'images_per_s'")),
                "final": dict(((p, s, t, n), v) for p, s, t, n, v in con.execute(
                    "SELECT protocol, selection, threshold_policy, name, value FROM final_metrics"))}
    finally:
        con.close()


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["paper", "reference"])  # pool: every sample, first / correct-only, after
def test_torchrun_two_processes_train_one_run_like_one_process(smoke_cache, tmp_path, variant):  # noqa: F811
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    one = _train(tmp_path / "one", smoke_cache, 1, variant)
    assert one.returncode == 0, one.stdout + one.stderr
    two = _train(tmp_path / "two", smoke_cache, 2, variant)
    assert two.returncode == 0, two.stdout + two.stderr
    a, b = _stored(tmp_path / "one" / "runs.db"), _stored(tmp_path / "two" / "runs.db")
    assert len(b["runs"]) == 1 and b["runs"][0] == a["runs"][0]  # one row, the same run id, finished
    assert b["runs"][0][1] == "finished"
    assert sorted(p.name for p in (tmp_path / "two" / "runs" / b["runs"][0][0]).glob("*.pt")) == [
        "best_gt_known_loc.pt", "best_top1_cls.pt", "best_top1_loc.pt", "last.pt", "prev.pt"]
    assert checkpoint(tmp_path / "two" / "runs")["epoch"] == 1  # both epochs trained, rank 0 wrote them
    # Loss terms: the epoch means of the global batches. Rounding alone moves them by up to 3.4e-5 at this lr
    # (one process, one weight tensor moved by one float32 step; the two processes measured 9e-7); rank 0's
    # half-batches alone would be 0.6 % (epoch 1) and 9 % (epoch 2) off. 1e-3 sits >= 6x from both.
    assert a["train"].keys() == b["train"].keys() and len(a["train"]) > 0
    for key, value in a["train"].items():
        assert b["train"][key] == pytest.approx(value, rel=1e-3), key
    # Test metrics: float32 training on 2 processes is not bit-identical (the module docstring), so
    # accuracies may differ by a few of the 24 smoke test images (measured: 1): 3/24.
    assert a["final"].keys() == b["final"].keys()
    for key, value in a["final"].items():
        if key[3] in ("top1_cls", "top5_cls", "top1_loc", "top5_loc", "gt_known_loc"):
            assert abs(b["final"][key] - value) <= 3 / 24 + 1e-9, key


@pytest.mark.slow
def test_ablate_gpus_2_trains_each_run_with_torchrun(smoke_cache, tmp_path):  # noqa: F811
    """``ablate --gpus 2`` runs every planned run as ``torchrun ... kdcicam train --run-spec`` (a one-cell table)."""
    import shutil

    registry = tmp_path / "registry"
    shutil.copytree(Path(__file__).resolve().parents[1] / "ablations", registry,
                    ignore=shutil.ignore_patterns("table*.toml", "figure*.toml"))
    (registry / "mini.toml").write_text('title = "one cell"\ncaption = ""\nreference_cell = "conpool"\n'
                                        'metrics = ["top1_cls"]\n\n[[cells]]\nkey = "conpool"\nname = "+ConPool"\n'
                                        'role = "student"\ncontext_pool = true\n')
    env = {**kdcicam_env(smoke_cache), "KDCICAM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "kdcicam", "ablate", "mini", "--registry", str(registry), "--profile",
                           "smoke", "--device", "cpu", "--gpus", "2", "--db", f"sqlite:///{tmp_path / 'runs.db'}",
                           "--artifacts", str(tmp_path / "art"), "--quiet"],
                          cwd=tmp_path, env=env, text=True, capture_output=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    stored = _stored(tmp_path / "runs.db")
    (run_id, status), = stored["runs"]
    assert status == "finished" and (tmp_path / "art" / "jobs" / f"{run_id}.json").is_file()
    assert (tmp_path / "art" / run_id / "last.pt").is_file() and "1 trained" in done.stdout
