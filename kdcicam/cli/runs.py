"""``kdcicam runs``: list the runs in the run store, show one in full, delete runs, export the store,
archive finished runs to files and import them into another store.

Each command lives in a module of its own (``runs_list``, ``runs_show``, ``runs_delete``, ``runs_export``,
``runs_archive``);
this module gathers them under one Typer app.
"""

from __future__ import annotations

import typer

from kdcicam.cli.runs_archive import archive_cmd, import_cmd
from kdcicam.cli.runs_delete import delete_cmd
from kdcicam.cli.runs_export import EXPORTS, export_cmd, export_frame
from kdcicam.cli.runs_format import HEADLINE_METRICS, headline
from kdcicam.cli.runs_list import list_cmd
from kdcicam.cli.runs_show import show_cmd

__all__ = ["EXPORTS", "HEADLINE_METRICS", "app", "export_frame", "headline"]

app = typer.Typer(help="List and inspect the runs recorded in the run store.", no_args_is_help=True)
app.command("list")(list_cmd)
app.command("show")(show_cmd)
app.command("delete")(delete_cmd)
app.command("export")(export_cmd)
app.command("archive")(archive_cmd)
app.command("import")(import_cmd)
