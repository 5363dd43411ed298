"""Lowest layer: typed configs, run identity, errors, process-level runtime settings, number formatting."""
