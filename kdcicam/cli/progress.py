"""Rich progress display for runs: a bar over the plan's runs and one over the current run's epoch,
with the loss terms, images/s and ETA. The runner only emits events; this turns them into output."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class RunProgress:
    """Context manager; pass :meth:`event` as the runner's ``on_event``."""

    def __init__(self, console: Console | None = None, total_runs: int = 1, quiet: bool = False) -> None:
        self.console = console or Console(stderr=True)
        self.quiet = quiet
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(), TimeRemainingColumn(), console=self.console, transient=False,
            disable=quiet)
        self.total_runs = total_runs
        self.plan_task: TaskID | None = None
        self.epoch_task: TaskID | None = None
        self.current: str | None = None

    def __enter__(self) -> RunProgress:
        self.progress.__enter__()
        self.plan_task = self.progress.add_task("runs", total=self.total_runs, info="")
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)

    def start_run(self, run_id: str, label: str, epochs: int) -> None:
        self.current = run_id
        if self.epoch_task is not None:
            self.progress.remove_task(self.epoch_task)
        self.epoch_task = self.progress.add_task(f"  {run_id[:8]} {label}", total=epochs, info="")

    def end_run(self, status: str) -> None:
        if self.plan_task is not None:
            self.progress.advance(self.plan_task)
        if self.epoch_task is not None:
            self.progress.remove_task(self.epoch_task)
            self.epoch_task = None

    def log(self, message: str) -> None:
        if not self.quiet:
            self.progress.console.print(message)

    def event(self, kind: str, data: dict[str, Any]) -> None:
        if kind in ("warning", "resumed", "waiting"):
            self._message(kind, data)
            return
        if self.epoch_task is None:
            return
        if kind == "step":
            terms = " ".join(f"{k}={v:.3f}" for k, v in data["terms"].items() if k != "total")
            self.progress.update(self.epoch_task, info=f"step {data['step']}/{data['steps']} {terms}")
        elif kind == "epoch":
            val = data.get("val") or {}
            val_txt = " ".join(f"val {k}={v:.3f}" for k, v in val.items() if k in ("top1_cls", "top1_loc", "gt_known_loc"))
            self.progress.update(self.epoch_task, completed=data["epoch"],
                                 info=f"loss={data['terms'].get('total', float('nan')):.3f} "
                                      f"{data['images_per_s']:.0f} img/s {val_txt}")

    def _message(self, kind: str, data: dict[str, Any]) -> None:
        if kind == "warning":
            self.log(f"[yellow]warning[/]: {data['message']}")
        elif kind == "resumed":
            self.log(data["message"])
        elif kind == "waiting":
            holder = data.get("holder") or "another process"
            self.log(f"run {data['run_id'][:12]} is being trained by {holder}; waiting for it")
