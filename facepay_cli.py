"""The `facepay` command: one entry point, each group loaded only when it is used."""

from __future__ import annotations

import importlib
import logging
import sys
from typing import Any

import click

# name -> "module:attribute"; a group's module (and its heavy imports) loads only when called.
GROUPS = {
    "models": "models.cli:models_group",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*GROUPS, *super().list_commands(ctx)])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in GROUPS:
            module_name, attribute = GROUPS[cmd_name].split(":")
            command: click.Command = getattr(importlib.import_module(module_name), attribute)
            return command
        return super().get_command(ctx, cmd_name)

    def invoke(self, ctx: click.Context) -> Any:
        from models.errors import FaceEngineError

        try:
            return super().invoke(ctx)
        except FaceEngineError as exc:
            click.secho(f"error [{exc.code}]: {exc}", fg="red", err=True)
            sys.exit(2)


@click.group(cls=LazyGroup)
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def main(verbose: int) -> None:
    """facepay: pay by face, with privacy first."""
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)]
    logging.basicConfig(
        level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
