"""The device string stored with every run: the CPU's model, architecture, kernel instruction set and threads."""

import platform

import pytest
import torch

from kdcicam.core.runtime import DEVICE_TEXT_MAX, cpu_capability, cpu_model, device_name, short_cpu_model

THREADS = torch.get_num_threads()


def test_cpu_model_reads_the_first_model_name(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD  EPYC 7B13 64-Core Processor\n"
                    "processor\t: 1\nmodel name\t: something else\n")
    assert cpu_model(info) == "AMD EPYC 7B13 64-Core Processor"


def test_cpu_model_of_an_arm_board(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nBogoMIPS\t: 108.00\n\nModel\t\t: Raspberry Pi 4 Model B Rev 1.4\n")
    assert cpu_model(info) == "Raspberry Pi 4 Model B Rev 1.4"


def test_cpu_model_without_cpuinfo_falls_back_to_platform(tmp_path):
    assert cpu_model(tmp_path / "missing") == platform.processor()


def test_cpu_device_string_names_model_architecture_capability_and_threads(monkeypatch):
    monkeypatch.setattr("kdcicam.core.runtime.cpu_model", lambda: "Intel(R) Xeon(R) Gold 6338")
    monkeypatch.setattr("kdcicam.core.runtime.cpu_capability", lambda: "AVX512")
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    threads = torch.get_num_threads()
    assert device_name(torch.device("cpu")) == f"cpu (Intel Xeon Gold 6338, x86_64, AVX512, {threads} threads)"


def test_cpu_device_string_drops_empty_and_repeated_parts(monkeypatch):
    monkeypatch.setattr("kdcicam.core.runtime.cpu_model", lambda: "x86_64")  # platform.processor() on some Linux
    monkeypatch.setattr("kdcicam.core.runtime.cpu_capability", lambda: "")
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    assert device_name(torch.device("cpu")) == f"cpu (x86_64, {torch.get_num_threads()} threads)"


def test_cpu_capability_is_what_torch_dispatches_to():
    if not hasattr(torch.backends.cpu, "get_cpu_capability"):
        pytest.skip("this torch does not expose its CPU capability")
    assert cpu_capability() == torch.backends.cpu.get_cpu_capability()
    assert cpu_capability() != ""


@pytest.mark.parametrize(("model", "short"), [
    ("Intel(R) Xeon(R) Platinum 8480+ CPU @ 2.00GHz", "Intel Xeon Platinum 8480+"),
    ("AMD EPYC 7B13 64-Core Processor", "AMD EPYC 7B13"),
    ("Intel(R) Core(TM) i9-13900K", "Intel Core i9-13900K"),
    ("Apple M2 Max", "Apple M2 Max"),
])
def test_cpu_model_names_lose_their_boilerplate(model, short):
    assert short_cpu_model(model) == short


def test_the_device_string_fits_the_store_column_whatever_the_model(monkeypatch):
    from kdcicam.store.schema import Run

    assert Run.__table__.c["device"].type.length == DEVICE_TEXT_MAX
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    monkeypatch.setattr("kdcicam.core.runtime.cpu_capability", lambda: "AVX512")
    monkeypatch.setattr("kdcicam.core.runtime.cpu_model", lambda: "Intel(R) Xeon(R) Platinum 8480+ CPU @ 2.00GHz")
    torch.set_num_threads(1)
    try:
        assert device_name(torch.device("cpu")) == "cpu (Intel Xeon Platinum 8480+, x86_64, AVX512, 1 threads)"
        monkeypatch.setattr("kdcicam.core.runtime.cpu_model", lambda: "Some Vendor " + "Very Long Model Name " * 4)
        text = device_name(torch.device("cpu"))
        assert len(text) == DEVICE_TEXT_MAX and text.startswith("cpu (Some Vendor Very Long")
        assert text.endswith("…, x86_64, AVX512, 1 threads)")
    finally:
        torch.set_num_threads(THREADS)
