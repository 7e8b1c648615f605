"""`facepay server operator …`: add, list, disable and unlock the people who use the console.

The first admin can only be made here; after that, admins add operators in the console too.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from server.operators.models import ROLES

# server.cli imports this module at its end, so its helpers are imported inside the commands.
_json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


def _row(operator: Any) -> dict[str, Any]:
    from server.operators import service

    return {
        "name": operator.name,
        "role": operator.role,
        "status": service.status_of(operator),
        "created_at": operator.created_at.isoformat(),
        "last_login_at": operator.last_login_at.isoformat() if operator.last_login_at else None,
    }


@click.group("operator")
def operator_group() -> None:
    """Console operators: add (auditor, privacy_officer or admin), list, disable, unlock."""


@operator_group.command("add")
@click.argument("name")
@click.option("--role", type=click.Choice(ROLES), required=True)
@click.option(
    "--password-stdin",
    is_flag=True,
    help="Read the password from the first line of standard input instead of asking.",
)
@_json_option
def operator_add(name: str, role: str, password_stdin: bool, as_json: bool) -> None:
    """Add an operator; the password is asked for twice, never taken as an argument."""
    from server.cli import _app, _emit
    from server.db import transaction
    from server.operators import service

    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    try:
        service.check_name(name)
        service.check_password(password)
        with _app() as svc, transaction(svc.sessions) as session:
            operator = service.create(
                session, svc.keys.audit_key, name=name, role=role, password=password, actor="cli"
            )
            data = _row(operator)
    except service.OperatorError as error:
        raise click.ClickException(str(error.detail)) from None
    _emit(as_json, data, f"operator {name} added ({role})")


@operator_group.command("list")
@_json_option
def operator_list(as_json: bool) -> None:
    """Every operator with their role and status (active, locked, disabled)."""
    from server.cli import _app
    from server.operators import service

    with _app() as svc, svc.sessions() as session:
        rows = [_row(operator) for operator in service.list_operators(session)]
    if as_json:
        click.echo(json.dumps(rows))
        return
    for row in rows:
        click.echo(f"{row['name']:<24} {row['role']:<16} {row['status']}")


def _change(name: str, action: str, as_json: bool) -> None:
    from server.cli import _app, _emit
    from server.db import transaction
    from server.operators import service

    change = service.disable if action == "disable" else service.unlock
    try:
        with _app() as svc, transaction(svc.sessions) as session:
            data = _row(change(session, svc.keys.audit_key, name, actor="cli"))
    except service.OperatorNotFound as error:
        raise click.ClickException(str(error.detail)) from None
    _emit(as_json, data, f"operator {name}: {data['status']}")


@operator_group.command("disable")
@click.argument("name")
@_json_option
def operator_disable(name: str, as_json: bool) -> None:
    """No more sign-ins; an open console session ends at its next request."""
    _change(name, "disable", as_json)


@operator_group.command("unlock")
@click.argument("name")
@_json_option
def operator_unlock(name: str, as_json: bool) -> None:
    """Lift a lockout after repeated failed sign-ins (and reset the count)."""
    _change(name, "unlock", as_json)
