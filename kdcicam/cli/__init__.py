"""The ``kdcicam`` command line: a thin Typer layer that builds objects and calls library code.

Every sub-command group lives in its own module (``cli/data.py``...), registered below. Errors a
user can cause are :class:`kdcicam.core.errors.KdcicamError`: printed as one line, exit code 2.
"""

from __future__ import annotations

import os
import sys
import warnings

# OpenMP threads that spin while waiting for a core slow CPU training 3-5x on a machine shared with
# other busy processes (benchmarks/README.md); set before torch is imported. The user's value wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import typer

from kdcicam.core.errors import (
    EXIT_INTERNAL_ERROR,
    EXIT_INTERRUPTED,
    EXIT_USER_ERROR,
    KdcicamError,
    KdcicamWarning,
)

app = typer.Typer(
    name="kdcicam",
    help="Reproducibility harness for KD-CI-CAM: train, evaluate, ablate and report.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
) -> None:
    """Reproducibility harness for KD-CI-CAM."""


def _register_subcommands() -> None:
    from kdcicam.cli import ablate as ablate_cli
    from kdcicam.cli import data as data_cli
    from kdcicam.cli import runcmds

    app.command("train")(runcmds.train)
    app.command("evaluate")(runcmds.evaluate_cmd)
    app.command("ablate")(ablate_cli.ablate)
    from kdcicam.cli.claims import claims_cmd

    app.command("claims")(claims_cmd)
    from kdcicam.cli.baselines import baselines_cmd

    app.command("baselines")(baselines_cmd)
    from kdcicam.cli.pretrain import pretrain_cmd

    app.command("pretrain")(pretrain_cmd)
    from kdcicam.cli import report as report_cli

    report_cli.register(app)
    from kdcicam.cli import evalcams as evalcams_cli

    evalcams_cli.register(app)
    app.add_typer(data_cli.app, name="data")
    from kdcicam.cli import runs as runs_cli; app.add_typer(runs_cli.app, name="runs")  # noqa: E702


_register_subcommands()


def _show_warnings_as_one_line() -> None:
    """Print kdcicam's warnings as ``warning: <message>`` on stderr (each once), others as Python does."""
    default = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, KdcicamWarning):
            typer.echo(f"warning: {message}", err=True)
        else:
            default(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    warnings.simplefilter("default", KdcicamWarning)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the app, turn user errors into one line + exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    if argv is None:  # a real command line, not a test calling main([...]): `kill PID` reads as Ctrl-C
        from kdcicam.core.signals import install_sigterm_as_interrupt

        install_sigterm_as_interrupt()
    try:
        with warnings.catch_warnings():
            _show_warnings_as_one_line()
            app(args=args, prog_name="kdcicam", standalone_mode=True)
    except KdcicamError as exc:
        if debug:
            raise
        typer.echo(f"error: {exc}", err=True)
        raise SystemExit(EXIT_USER_ERROR) from None
    except OSError as exc:  # the environment, not a bug: disk full, file too large, permission denied
        if debug:
            raise
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        typer.echo(f"error: cannot read or write a file{where}: {exc.strerror or exc}", err=True)
        raise SystemExit(EXIT_USER_ERROR) from None
    except KeyboardInterrupt:
        if debug:
            raise
        typer.echo("interrupted", err=True)
        raise SystemExit(EXIT_INTERRUPTED) from None
    except Exception as exc:  # a bug, not bad input: one line plus how to see more
        if debug:
            raise
        typer.echo(
            f"internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)",
            err=True,
        )
        raise SystemExit(EXIT_INTERNAL_ERROR) from None
