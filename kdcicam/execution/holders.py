"""Is the process that holds a ``running`` run still alive? (Light: no torch, for the CLI's listings.)"""

from __future__ import annotations

import os
import socket
from datetime import datetime
from pathlib import Path

from kdcicam.store import RunInfo, utc_now

STALE_AFTER_S = 120.0  # a running run whose heartbeat is older than this is taken over (kdcicam.execution.runner)


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine and has not exited (a zombie counts as gone).

    A pid reused by an unrelated process reads as alive; the run store's heartbeat then decides.
    """
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    try:  # Linux: an exited child its parent has not reaped yet is still listed, as state Z
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True




def holder_gone(info: RunInfo, stale_after_s: float = STALE_AFTER_S, now: datetime | None = None) -> str | None:
    """Why the process holding a ``running`` run is dead (its pid is gone on this host, or its
    heartbeat is stale), or None while it may be alive."""
    if info.heartbeat_at is None:
        return f"process {info.pid} on {info.host}, which never beat its heartbeat"
    age = ((now or utc_now()) - info.heartbeat_at).total_seconds()
    if age > stale_after_s:
        return f"process {info.pid} on {info.host}, silent for {age:.0f} s"
    if info.host == socket.gethostname() and info.pid is not None:
        if info.pid == os.getpid():
            return f"an earlier attempt of this process ({info.pid})"
        if not process_alive(info.pid):
            return f"process {info.pid} on this host, which is gone"
    return None
