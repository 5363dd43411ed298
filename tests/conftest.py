import os

import pytest
import torch

# Two CPU cores everywhere (CI and dev machines): keep torch from oversubscribing them.
torch.set_num_threads(min(2, os.cpu_count() or 1))
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
