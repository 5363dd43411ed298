import os
import signal

import pytest
import torch

# Two CPU cores everywhere (CI and dev machines), shared among pytest-xdist's workers (`-n 2` in
# pyproject.toml): keep torch from oversubscribing them.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1) // _WORKERS))
if os.environ.get("PYTEST_XDIST_WORKER"):
    # xdist's workers ignore SIGINT, and an ignored signal stays ignored in every child they start:
    # the Ctrl-C tests would send it to a process that cannot hear it. Python's own handler again.
    signal.signal(signal.SIGINT, signal.default_int_handler)
# `kdcicam ablate` in-process (CliRunner): one process per command, whatever the machine's cores
# (--jobs auto would start worker processes); tests of --jobs pass it or unset this.
os.environ["KDCICAM_JOBS"] = "1"


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device; this machine has none")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
