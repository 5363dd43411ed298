"""A transient progress line while a command reads a dataset's image headers (minutes for ILSVRC's
1.33M images): the count read so far and the time taken, on a terminal only."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import Progress, TaskID, TextColumn, TimeElapsedColumn

SHOW_AFTER = 2000  # headers read before the line appears (a small dataset is done before that)
EVERY = 500  # headers between two updates of the line


@contextmanager
def header_progress(quiet: bool = False, console: Console | None = None, show_after: int = SHOW_AFTER
                    ) -> Iterator[None]:
    """Within the block, show how many image headers have been read, once ``show_after`` have been.

    Nothing is shown when ``quiet`` or when the console is not a terminal (logs and pipes stay clean);
    the line disappears at the end of the block.
    """
    from kdcicam.data.header_count import watching_headers

    console = console or Console(stderr=True)
    if quiet or not console.is_terminal:
        yield
        return
    progress = Progress(TextColumn("reading image headers (--no-headers skips it):"),
                        TextColumn("{task.completed:,.0f} read"),
                        TimeElapsedColumn(), console=console, transient=True)
    count = 0
    task: TaskID | None = None

    def on_read() -> None:
        nonlocal count, task
        count += 1
        if count == show_after:
            progress.start()
            task = progress.add_task("headers", total=None, completed=count)
        elif task is not None and count % EVERY == 0:
            progress.update(task, completed=count)

    try:
        with watching_headers(on_read):
            yield
    finally:
        if task is not None:
            progress.stop()
