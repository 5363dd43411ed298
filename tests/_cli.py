"""The CLI run in-process, as a user's shell would see it: exit code, stdout, stderr."""

from __future__ import annotations

from kdcicam.cli import main


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """Run ``kdcicam argv`` in this process; (exit code, stdout, stderr)."""
    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err
