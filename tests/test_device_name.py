"""The device string stored with every run: the CPU's model, architecture, kernel instruction set and threads."""

import platform

import pytest
import torch

from kdcicam.core.runtime import cpu_capability, cpu_model, device_name


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
    assert device_name(torch.device("cpu")) == f"cpu (Intel(R) Xeon(R) Gold 6338, x86_64, AVX512, {threads} threads)"


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
