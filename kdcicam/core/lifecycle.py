"""The statuses a run passes through in the store: pending -> running -> finished or failed (a failed
or interrupted run is claimed again and resumed)."""

RUN_STATUSES: tuple[str, ...] = ("pending", "running", "finished", "failed")
