"""Datasets (CUB-200-2011 layout, ILSVRC, wsolevaluation metadata), splits and box-aligned transforms."""
