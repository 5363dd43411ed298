"""Execution: a run's lifecycle (runner), planning registry cells into runs, launchers, ETAs, liveness of run holders."""
