"""The shopper's privacy pages: the published policy, and deletion or export of their data
with a one-time code mailed to them. HTML forms with CSRF tokens; not part of the JSON API."""

from __future__ import annotations

import json
import logging
from typing import Any

from flask import Blueprint, Response, redirect, render_template, request, url_for
from flask import session as cookie
from flask.typing import ResponseReturnValue
from flask_wtf.csrf import CSRFError

from server.config import Settings
from server.db import transaction
from server.errors import ProblemError
from server.extensions import Services, services
from server.mail import MailError, send_mail
from server.privacy.service import finish_deletions
from server.shopper_web import service
from server.shopper_web.service import Outcome, Pending
from server.web import secure_page

logger = logging.getLogger(__name__)

bp = Blueprint("shopper_web", __name__, url_prefix="/privacy")
bp.after_request(secure_page)

PENDING = "privacy_request"  # the session cookie's key for the request in progress
LANGUAGES = ("en", "fr")

# Every refusal or end state has a stable code, shown on the page and in data-code.
MESSAGES = {
    "invalid_email": "This is not a valid email address.",
    "invalid_purpose": "Choose whether to delete or to export your data.",
    "csrf_failed": "The form expired or did not come from this site. Nothing was done; "
    "please start again.",
    "no_request": "There is no request in progress in this browser, or it is no longer valid. "
    "Ask for a new code.",
    "wrong_code": "This code is not right.",
    "code_exhausted": "Too many wrong codes: this code no longer works. Ask for a new one.",
    "code_expired": "This code has expired. Ask for a new one.",
    "code_used": "This code was already used. Ask for a new one.",
    "confirm_required": "Tick the box to confirm the deletion.",
    "nothing_found": "We hold nothing about this address: no enrolled shopper uses it.",
    "no_policy": "No privacy notice is published yet.",
}


def _message(code: str, status: int, *, title: str = "Privacy request") -> ResponseReturnValue:
    page = render_template("shopper/message.html", code=code, text=MESSAGES[code], title=title)
    return page, status


@bp.errorhandler(CSRFError)
def _csrf_failed(_error: Any) -> ResponseReturnValue:
    return _message("csrf_failed", 400)


@bp.get("")
def policy() -> ResponseReturnValue:
    lang = request.args.get("lang", "en")
    lang = lang if lang in LANGUAGES else "en"
    try:
        with services().sessions() as session:
            page = service.policy_page(session, lang)
    except ProblemError:
        return _message("no_policy", 503, title="Privacy policy")
    return render_template("shopper/policy.html", lang=lang, page=page)


@bp.route("/request", methods=["GET", "POST"])
def request_code() -> ResponseReturnValue:
    if request.method != "POST":  # GET, or the HEAD Flask adds: never the form's work
        purpose = request.args.get("purpose", "delete")
        return render_template("shopper/request.html", email="", purpose=purpose, error=None)
    svc = services()
    raw_email = request.form.get("email", "")[: 4 * service.MAX_EMAIL_LENGTH]
    purpose = request.form.get("purpose", "")
    try:
        email = service.normalise_email(raw_email)
        service.check_purpose(purpose)
    except service.InvalidRequest as exc:
        page = render_template(
            "shopper/request.html",
            email=raw_email,
            purpose=purpose,
            error=exc.code,
            text=MESSAGES[exc.code],
        )
        return page, 400
    with transaction(svc.sessions) as session:
        asked = service.request_code(
            session, svc.keys, email=email, purpose=purpose, ttl_s=svc.settings.code_ttl_s
        )
    # Over a limit there is no code: a request id that matches nothing keeps the
    # cookie and every later page the same as for a real request.
    request_id = asked.request_id or service.new_request_id()
    _remember(svc, Pending(request_id, purpose, email))
    response = redirect(url_for(".confirm"), 303)
    if asked.mail_code is not None:
        # Sent once the response is out, so that its timing does not tell whether a mail went.
        settings, code = svc.settings, asked.mail_code
        response.call_on_close(lambda: _mail_code(settings, email, purpose, code))
    return response


@bp.route("/confirm", methods=["GET", "POST"])
def confirm() -> ResponseReturnValue:
    svc = services()
    pending = _pending(svc)
    if pending is None:
        return _message("no_request", 200 if request.method != "POST" else 400)
    if request.method != "POST":  # GET, or the HEAD Flask adds: never the form's work
        return _confirm_page(svc, pending)
    code = request.form.get("code", "")
    tries = svc.settings.code_tries
    if pending.purpose == "export":
        with transaction(svc.sessions) as session:
            outcome = service.export_for_email(session, svc.keys, pending, code, tries=tries)
        if outcome.ok and outcome.document is not None:
            _forget()
            return _export_response(outcome.document)
        return _refused(svc, pending, outcome)
    with transaction(svc.sessions) as session:
        outcome = service.verify_for_deletion(session, svc.keys, pending, code, tries=tries)
    if not outcome.ok:
        return _refused(svc, pending, outcome)
    _remember(svc, Pending(pending.request_id, pending.purpose, pending.email, verified=True))
    return redirect(url_for(".confirm"), 303)


@bp.post("/confirm/delete")
def confirm_deletion() -> ResponseReturnValue:
    svc = services()
    pending = _pending(svc)
    if pending is None or not pending.verified:
        return _message("no_request", 400)
    if request.form.get("understand") != "yes":
        return _confirm_page(svc, pending, error="confirm_required", status=400)
    with transaction(svc.sessions) as session:
        outcome = service.delete_for_email(
            session, svc.keys, pending, tries=svc.settings.code_tries
        )
    # Committed: now the data keys are destroyed and the index entries dropped.
    finish_deletions(svc, outcome.deleted)
    if not outcome.ok:
        return _refused(svc, pending, outcome)
    _forget()
    return render_template("shopper/receipt.html", receipts=outcome.receipts)


def _confirm_page(
    svc: Services, pending: Pending, *, error: str | None = None, status: int = 200
) -> ResponseReturnValue:
    template = "shopper/confirm_delete.html" if pending.verified else "shopper/confirm.html"
    page = render_template(
        template,
        email=pending.email,
        purpose=pending.purpose,
        minutes=max(svc.settings.code_ttl_s // 60, 1),
        error=error,
        text=MESSAGES.get(error or ""),
        tries_left=None,
    )
    return page, status


def _refused(svc: Services, pending: Pending, outcome: Outcome) -> ResponseReturnValue:
    if outcome.code == "nothing_found":
        _forget()
        return _message("nothing_found", 200)
    if outcome.final:
        _forget()
        return _message(outcome.code, 400)
    page = render_template(
        "shopper/confirm.html",
        email=pending.email,
        purpose=pending.purpose,
        minutes=max(svc.settings.code_ttl_s // 60, 1),
        error=outcome.code,
        text=MESSAGES[outcome.code],
        tries_left=outcome.tries_left,
    )
    return page, 400


def _export_response(document: dict[str, Any]) -> Response:
    return Response(
        json.dumps(document, indent=2, ensure_ascii=False),
        mimetype="application/json",
        headers={"Content-Disposition": "attachment; filename=facepay-export.json"},
    )


def _remember(svc: Services, pending: Pending) -> None:
    cookie[PENDING] = {
        "id": pending.request_id,
        "purpose": pending.purpose,
        "email": service.seal_email(svc.keys, pending.request_id, pending.email),
        "verified": (
            service.verification_proof(svc.keys, pending.request_id) if pending.verified else ""
        ),
    }


def _forget() -> None:
    cookie.pop(PENDING, None)


def _pending(svc: Services) -> Pending | None:
    saved = cookie.get(PENDING)
    if not isinstance(saved, dict):
        return None
    request_id, purpose, sealed = saved.get("id"), saved.get("purpose"), saved.get("email")
    if not (isinstance(request_id, str) and isinstance(sealed, str)):
        return None
    if purpose not in service.PURPOSES:
        return None
    email = service.open_email(svc.keys, request_id, sealed)
    if email is None:
        return None
    verified = service.proves_verification(svc.keys, request_id, saved.get("verified"))
    return Pending(request_id, str(purpose), email, verified=verified)


def _mail_code(settings: Settings, email: str, purpose: str, code: str) -> None:
    subject, body = service.code_mail(purpose, code, settings.code_ttl_s)
    try:
        send_mail(settings, email, subject, body)
    except MailError as exc:
        logger.error("the one-time code could not be mailed: %s", exc)
    except Exception as exc:  # after the response: nothing above would report it
        logger.error("the one-time code could not be mailed: %s", type(exc).__name__)
