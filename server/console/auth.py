"""Who is signed in to the console, and what their role lets them open.

The session cookie holds only the operator's id and the token of their open session; the
operator is loaded again on every request, so a role change or a disabled account takes effect
at once. How old a session is comes from the operator's row (when they last signed in), not from
the cookie: the cookie is signed, but whoever holds the secret key could sign any time into it.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable
from typing import Any, TypeVar, cast

from flask import abort, g, redirect, request, session, url_for

from server.audit.service import record_event
from server.db import transaction, utcnow
from server.extensions import services
from server.operators import service as operators
from server.operators.models import Operator

View = TypeVar("View", bound=Callable[..., Any])

SESSION_OPERATOR = "operator_id"
SESSION_TOKEN = "session_token"


def sign_in(operator: Operator, token: str) -> None:
    """A fresh session for this operator: nothing set before sign-in survives it (fixation),
    and the CSRF token is new too. `token` is the one `operators.open_session` made."""
    session.clear()
    session.permanent = True
    session[SESSION_OPERATOR] = operator.id
    session[SESSION_TOKEN] = token


def sign_out() -> None:
    session.clear()


def current_operator() -> Operator | None:
    """The signed-in operator, or None (and the session is cleared) when the account is gone or
    disabled, the session outlived its hours, or the operator signed in again since."""
    if "operator" in g:
        found: Operator | None = g.operator
        return found
    g.operator = None
    operator_id = session.get(SESSION_OPERATOR)
    token = session.get(SESSION_TOKEN)
    if not (isinstance(operator_id, str) and isinstance(token, str)):
        return None
    svc = services()
    with svc.sessions() as db:
        operator = operators.get(db, operator_id)
    if operator is None or operator.disabled_at is not None or operator.last_login_at is None:
        sign_out()
        return None
    # One session per operator: signing in elsewhere or out ends this one, copies of its cookie
    # included. And a session has a hard limit from its sign-in (the token was made then),
    # whatever the cookie's own expiry says.
    age = utcnow() - operator.last_login_at
    expired = age > dt.timedelta(hours=svc.settings.session_hours)
    if not operators.holds_session(operator, token) or expired:
        sign_out()
        return None
    g.operator = operator
    return operator


def operator() -> Operator:
    """The signed-in operator, inside a view guarded by `allow`."""
    found = current_operator()
    assert found is not None
    return found


def _record_refusal(found: Operator) -> None:
    """A signed-in operator tried what their role does not allow: worth knowing about."""
    svc = services()
    with transaction(svc.sessions) as db:
        record_event(
            db,
            svc.keys.audit_key,
            "console.forbidden",
            subject=found.id,
            actor=found.name,
            data={"method": request.method, "endpoint": request.endpoint or ""},
        )


def allow(*roles: str) -> Callable[[View], View]:
    """Only signed-in operators with one of `roles` (none given: any role). Anyone else is sent
    to the sign-in page; a signed-in operator with another role gets 403."""

    def decorate(view: View) -> View:
        @functools.wraps(view)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            found = current_operator()
            if found is None:
                return redirect(url_for("console.login"))
            if roles and found.role not in roles:
                _record_refusal(found)
                abort(403)
            return view(*args, **kwargs)

        return cast(View, guarded)

    return decorate
