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
    "server": "server.cli:server_group",
    "kiosk": "kiosk.cli:kiosk_group",
    "demo": "facepay_demo:demo_command",
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
        try:
            return super().invoke(ctx)
        except Exception as exc:
            if not isinstance(exc, _user_errors()):
                raise
            code = getattr(exc, "code", None)
            prefix = f"error [{code}]" if isinstance(code, str) else "error"
            click.secho(f"{prefix}: {exc}", fg="red", err=True)
            sys.exit(2)


def _user_errors() -> tuple[type[Exception], ...]:
    """Errors that are the user's to fix (bad input, settings, keys): a message, no traceback.
    Only the groups already loaded are consulted, so `facepay models` never imports Flask."""
    found: list[type[Exception]] = []
    for module_name, names in (
        ("models.errors", ("FaceEngineError",)),
        ("server.config", ("ConfigError",)),
        ("server.errors", ("ProblemError",)),
        ("server.crypto.errors", ("CryptoError",)),
        ("kiosk.errors", ("KioskError",)),
    ):
        module = sys.modules.get(module_name)
        found.extend(getattr(module, name) for name in names if module is not None)
    return tuple(found)


@click.group(cls=LazyGroup)
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def main(verbose: int) -> None:
    """facepay: pay by face, with privacy first."""
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)]
    logging.basicConfig(
        level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )


if __name__ == "__main__":
    main()
