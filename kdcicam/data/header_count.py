"""Who is told of each image header a dataset scan reads: a caller may watch the count (to show progress
while the 1.33M headers of ILSVRC are read) without the loaders knowing about any display."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_watcher: ContextVar[Callable[[], None] | None] = ContextVar("header_watcher", default=None)


def header_read() -> None:
    """Tell the current watcher, if any, that one more image header was read."""
    watcher = _watcher.get()
    if watcher is not None:
        watcher()


@contextmanager
def watching_headers(on_read: Callable[[], None]) -> Iterator[None]:
    """Within the block, call ``on_read()`` once per image header read (the innermost watcher wins)."""
    token = _watcher.set(on_read)
    try:
        yield
    finally:
        _watcher.reset(token)
