"""A throwaway PostgreSQL server for tests: ``initdb`` + ``pg_ctl`` into a temporary folder.

Used by ``tests/test_store_postgres.py``. :func:`start_server` raises :class:`Unavailable` with a
reason that names what is missing (psycopg, the server binaries, a non-root user to run them as),
so the tests can skip, or fail when CI asks for PostgreSQL, with that reason.

PostgreSQL refuses to run as root; as root the server runs as the ``postgres`` system user (which
Debian's ``postgresql`` package creates), else as ``nobody``, in a temporary folder it owns.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

SUPERUSER = "kdcicam"  # database superuser the test cluster is created with (trust auth, localhost only)
_RUN_AS_CANDIDATES = ("postgres", "nobody")
# Speed over durability: the cluster is thrown away after the tests.
_SERVER_SETTINGS = ("fsync=off", "synchronous_commit=off", "full_page_writes=off", "max_connections=60",
                    "listen_addresses=127.0.0.1")


class Unavailable(RuntimeError):
    """No PostgreSQL server can be started here; the message says why."""


def find_bin_dir() -> Path | None:
    """The folder holding ``initdb`` and ``pg_ctl``: newest /usr/lib/postgresql/*/bin, else PATH."""
    def version(folder: str) -> tuple[int, ...]:
        name = Path(folder).parent.name
        return tuple(int(part) for part in name.split(".") if part.isdigit())

    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True)
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(str(Path(on_path).parent))
    for folder in candidates:
        if all(os.access(Path(folder) / tool, os.X_OK) for tool in ("initdb", "pg_ctl")):
            return Path(folder)
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run_as_prefix() -> tuple[list[str], pwd.struct_passwd | None]:
    """The command prefix that drops root (empty when not root) and the user it switches to."""
    if os.geteuid() != 0:
        return [], None
    runuser = shutil.which("runuser")
    if runuser is None:
        raise Unavailable("running as root and `runuser` is missing, so the server cannot drop root "
                          "(PostgreSQL refuses to run as root)")
    for name in _RUN_AS_CANDIDATES:
        try:
            user = pwd.getpwnam(name)
        except KeyError:
            continue
        return [runuser, "-u", name, "--"], user
    raise Unavailable("running as root and there is no 'postgres' or 'nobody' user to run the server "
                      "as (PostgreSQL refuses to run as root)")


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(text[-lines:]) or "(empty log)"


@dataclass
class PgServer:
    """A running throwaway server; :meth:`stop` it (the temporary folder goes with it)."""

    bin_dir: Path
    root: Path  # temporary folder: data/, the log and the unix socket
    port: int
    prefix: list[str]  # runuser ... -- when started as root
    _databases: int = field(default=0)

    def url(self, database: str = "postgres", driver: str = "postgresql+psycopg") -> str:
        """SQLAlchemy URL of ``database`` on this server (TCP on localhost, trust auth)."""
        return f"{driver}://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def connect(self, database: str = "postgres"):
        """A raw autocommit psycopg connection (for setting up and inspecting databases)."""
        import psycopg

        return psycopg.connect(host="127.0.0.1", port=self.port, user=SUPERUSER, dbname=database,
                               autocommit=True)

    def new_database(self) -> str:
        """Create an empty database and return its SQLAlchemy URL."""
        self._databases += 1
        name = f"test_{self._databases}"
        with self.connect() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        """Stop the server at once (its data is thrown away) and remove the temporary folder."""
        subprocess.run([*self.prefix, str(self.bin_dir / "pg_ctl"), "-D", str(self.root / "data"),
                        "-m", "immediate", "-w", "stop"], capture_output=True, check=False, timeout=60)
        shutil.rmtree(self.root, ignore_errors=True)


def start_server() -> PgServer:
    """initdb a fresh cluster in a temporary folder and start it on a free localhost port.

    Returns:
        The running server.

    Raises:
        Unavailable: psycopg is not importable, the binaries are missing, or the server would not
            start (the message carries the tail of its log).
    """
    try:
        import psycopg  # noqa: F401
    except ImportError as exc:
        raise Unavailable(f"psycopg is not importable ({exc}); pip install 'psycopg[binary]'") from None
    bin_dir = find_bin_dir()
    if bin_dir is None:
        raise Unavailable("no PostgreSQL server binaries (initdb, pg_ctl) under /usr/lib/postgresql/*/bin "
                          "or on PATH; apt-get install postgresql")
    prefix, user = _run_as_prefix()
    root = Path(tempfile.mkdtemp(prefix="kdcicam-pg-"))  # not under pytest's 0700 root-only tmp
    try:
        if user is not None:
            os.chown(root, user.pw_uid, user.pw_gid)
        _initdb(bin_dir, root, prefix)
        return _start(bin_dir, root, prefix)
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise


def _initdb(bin_dir: Path, root: Path, prefix: list[str]) -> None:
    base = [*prefix, str(bin_dir / "initdb"), "-D", str(root / "data"), "-U", SUPERUSER, "-A", "trust",
            "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"]
    # An ICU ("en") default collation orders text unlike SQLite's bytewise BINARY (_x < a < B rather
    # than B < _x < a), so the tests see whether the store really orders the same on both backends.
    # Servers without ICU support get the plain C.UTF-8 cluster.
    for extra in (["--locale-provider=icu", "--icu-locale=en"], []):
        shutil.rmtree(root / "data", ignore_errors=True)
        done = subprocess.run([*base, *extra], capture_output=True, text=True, check=False, timeout=120,
                              cwd=root)
        if done.returncode == 0:
            return
    last = (done.stderr or done.stdout).strip().splitlines()
    raise Unavailable(f"initdb failed: {last[-1] if last else done.returncode}")


def _start(bin_dir: Path, root: Path, prefix: list[str]) -> PgServer:
    log = root / "server.log"
    for _ in range(3):  # a free port can be taken between picking and binding it
        port = _free_port()
        options = " ".join([f"-p {port}", f"-k {root}", *(f"-c {s}" for s in _SERVER_SETTINGS)])
        done = subprocess.run([*prefix, str(bin_dir / "pg_ctl"), "-D", str(root / "data"), "-l", str(log),
                               "-w", "-t", "60", "-o", options, "start"],
                              capture_output=True, text=True, check=False, timeout=90, cwd=root)
        if done.returncode == 0:
            return PgServer(bin_dir=bin_dir, root=root, port=port, prefix=prefix)
    raise Unavailable(f"pg_ctl start failed: {_tail(log)}")
