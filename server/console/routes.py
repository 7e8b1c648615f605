"""The operator console: server-rendered pages for three roles.

auditor          the audit log and whether its chain verifies, consents, payments, kiosks
privacy_officer  find a shopper by email or id, see their record, export it, delete them
admin            kiosks (add, revoke) and operators (add, disable, unlock)

Anything else is 403. Every form carries a CSRF token (CSRFProtect refuses a POST without
one); every change, sign-in attempt, refusal and look-up of a shopper goes to the audit log.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any

from apiflask import HTTPError
from flask import (
    Blueprint,
    Response,
    abort,
    flash,
    redirect,
    render_template,
    request,
    url_for,
)
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException

from server.audit.service import verify as verify_chain
from server.console import service
from server.console.auth import allow, current_operator, operator, sign_in, sign_out
from server.db import transaction
from server.errors import ProblemError
from server.extensions import services
from server.kiosks import service as kiosks
from server.operators import service as operators
from server.operators.models import ROLES
from server.privacy import service as privacy
from server.web import secure_page

logger = logging.getLogger(__name__)

# A plain Flask blueprint: these pages are not part of the kiosk API's OpenAPI document.
bp = Blueprint("console", __name__, url_prefix="/console")
bp.after_request(secure_page)

AUDITOR, OFFICER, ADMIN = ROLES

# What each role may open, as the home page and the navigation list it.
MENU: dict[str, list[tuple[str, str]]] = {
    AUDITOR: [
        ("console.audit_log", "Audit log"),
        ("console.consents", "Consent records"),
        ("console.payments", "Charges"),
        ("console.kiosks", "Kiosks"),
    ],
    OFFICER: [("console.shoppers", "Find a shopper")],
    ADMIN: [("console.kiosks", "Kiosks"), ("console.operators", "Operators")],
}
ROLE_NAMES = {AUDITOR: "Auditor", OFFICER: "Privacy officer", ADMIN: "Administrator"}
LOGIN_REFUSED = "Sign-in failed: the name or password is wrong, or the account cannot sign in now."


@bp.context_processor
def _page_context() -> dict[str, Any]:
    found = current_operator()
    return {
        "me": found,
        "menu": MENU.get(found.role, []) if found else [],
        "role_names": ROLE_NAMES,
    }


# ---------------------------------------------------------------- errors, as pages


@bp.errorhandler(CSRFError)
def _csrf_failed(error: CSRFError) -> tuple[str, int]:
    # The reason (missing, expired, ...) is the library's fixed text, never request data.
    logger.info("console: form refused, CSRF check failed (%s)", error.description)
    return _error_page(400, "csrf_failed", "This form has expired or did not come from here.")


@bp.errorhandler(HTTPException)
def _http_error(error: HTTPException) -> tuple[str, int]:
    status = error.code or 500
    titles = {403: "You may not open this page.", 404: "There is nothing here."}
    codes = {403: "forbidden", 404: "not_found", 405: "method_not_allowed"}
    return _error_page(status, codes.get(status, "error"), titles.get(status, error.name))


@bp.errorhandler(HTTPError)
def _problem(error: HTTPError) -> tuple[str, int]:
    extra = error.extra_data or {}
    message = error.detail if isinstance(error.detail, str) else error.message
    return _error_page(error.status_code, str(extra.get("code", "error")), str(message))


def _error_page(status: int, code: str, message: str) -> tuple[str, int]:
    return render_template("console/error.html", status=status, code=code, message=message), status


# ---------------------------------------------------------------- every role


@bp.route("/login", methods=["GET", "POST"])
def login() -> Any:
    if request.method != "POST":  # GET, or the HEAD Flask adds: never the form's work
        if current_operator() is not None:
            return redirect(url_for("console.home"))
        return render_template("console/login.html", name="")
    name = request.form.get("name", "")
    password = request.form.get("password", "")
    svc = services()
    policy = operators.LoginPolicy(
        tries=svc.settings.login_tries, lockout=dt.timedelta(seconds=svc.settings.lockout_s)
    )
    with transaction(svc.sessions) as db:
        found = operators.authenticate(
            db, svc.keys.audit_key, name=name, password=password, policy=policy
        )
        token = operators.open_session(found) if found is not None else None
    if found is None or token is None:
        flash(LOGIN_REFUSED, "error")
        return render_template("console/login.html", name=name), 401
    sign_in(found, token)
    return redirect(url_for("console.home"))


@bp.post("/logout")
def logout() -> Any:
    found = current_operator()
    if found is not None:
        svc = services()
        with transaction(svc.sessions) as db:
            signed_out = operators.get(db, found.id)
            if signed_out is not None:
                operators.close_session(signed_out)
                operators.record_logout(db, svc.keys.audit_key, signed_out)
    sign_out()
    flash("Signed out.", "info")
    return redirect(url_for("console.login"))


@bp.get("/")
@allow()
def home() -> str:
    return render_template("console/home.html")


# ---------------------------------------------------------------- auditor


@bp.get("/audit")
@allow(AUDITOR)
def audit_log() -> str:
    svc = services()
    with svc.sessions() as db:
        result = verify_chain(db, svc.keys.audit_key)
        page = service.audit_page(db, service.page_number(request.args.get("page")))
    return render_template("console/audit.html", result=result, page=page)


@bp.get("/consents")
@allow(AUDITOR)
def consents() -> str:
    with services().sessions() as db:
        page = service.consents_page(db, service.page_number(request.args.get("page")))
    return render_template("console/consents.html", page=page)


@bp.get("/payments")
@allow(AUDITOR)
def payments() -> str:
    with services().sessions() as db:
        page = service.payments_page(db, service.page_number(request.args.get("page")))
    return render_template("console/payments.html", page=page)


# ---------------------------------------------------------------- kiosks: auditor reads, admin acts


@bp.get("/kiosks", endpoint="kiosks")
@allow(AUDITOR, ADMIN)
def kiosks_list() -> str:
    with services().sessions() as db:
        rows = service.kiosks(db)
    return render_template("console/kiosks.html", kiosks=rows)


@bp.post("/kiosks")
@allow(ADMIN)
def kiosk_add() -> Any:
    svc = services()
    try:
        name, store = service.check_kiosk_fields(
            request.form.get("name", ""), request.form.get("store", "")
        )
    except ProblemError as error:
        flash(str(error.detail), "error")
        return redirect(url_for("console.kiosks"))
    with transaction(svc.sessions) as db:
        created = kiosks.add_kiosk(
            db, svc.keys.audit_key, name=name, store=store, actor=operator().name
        )
    # Shown on this one answer only (no-store): the server keeps just a hash of the code.
    return render_template("console/kiosk_added.html", created=created, name=name, store=store)


@bp.post("/kiosks/<kiosk_id>/revoke")
@allow(ADMIN)
def kiosk_revoke(kiosk_id: str) -> Any:
    if not service.is_uuid(kiosk_id):
        abort(404)
    svc = services()
    with transaction(svc.sessions) as db:
        kiosks.revoke(db, svc.keys.audit_key, kiosk_id, actor=operator().name)
    flash("Kiosk revoked: its requests are refused from now on.", "info")
    return redirect(url_for("console.kiosks"))


# ---------------------------------------------------------------- admin: operators


@bp.get("/operators", endpoint="operators")
@allow(ADMIN)
def operators_list() -> str:
    with services().sessions() as db:
        rows = operators.list_operators(db)
    return render_template(
        "console/operators.html", operators=rows, roles=ROLES, status_of=operators.status_of
    )


@bp.post("/operators")
@allow(ADMIN)
def operator_add() -> Any:
    svc = services()
    password = request.form.get("password", "")
    if password != request.form.get("confirm", ""):
        flash("The two passwords differ.", "error")
        return redirect(url_for("console.operators"))
    try:
        with transaction(svc.sessions) as db:
            added = operators.create(
                db,
                svc.keys.audit_key,
                name=request.form.get("name", "").strip(),
                role=request.form.get("role", ""),
                password=password,
                actor=operator().name,
            )
    except operators.OperatorError as error:
        flash(str(error.detail), "error")
        return redirect(url_for("console.operators"))
    flash(f"Operator {added.name} added as {ROLE_NAMES[added.role]}.", "info")
    return redirect(url_for("console.operators"))


@bp.post("/operators/<name>/disable")
@allow(ADMIN)
def operator_disable(name: str) -> Any:
    if name == operator().name:
        flash("You cannot disable your own account.", "error")
        return redirect(url_for("console.operators"))
    svc = services()
    with transaction(svc.sessions) as db:
        operators.disable(db, svc.keys.audit_key, name, actor=operator().name)
    flash(f"Operator {name} disabled.", "info")
    return redirect(url_for("console.operators"))


@bp.post("/operators/<name>/unlock")
@allow(ADMIN)
def operator_unlock(name: str) -> Any:
    svc = services()
    with transaction(svc.sessions) as db:
        operators.unlock(db, svc.keys.audit_key, name, actor=operator().name)
    flash(f"Operator {name} unlocked.", "info")
    return redirect(url_for("console.operators"))


# ---------------------------------------------------------------- privacy officer


@bp.get("/shoppers")
@allow(OFFICER)
def shoppers() -> str:
    query = request.args.get("q", "").strip()
    found: list[Any] = []
    by = ""
    if query:
        svc = services()
        with transaction(svc.sessions) as db:
            by, found = service.search_shoppers(
                db, svc.keys.audit_key, query, actor=operator().name
            )
    return render_template("console/shoppers.html", query=query, by=by, found=found)


@bp.get("/shoppers/<shopper_id>")
@allow(OFFICER)
def shopper(shopper_id: str) -> str:
    svc = services()
    with transaction(svc.sessions) as db:
        summary = service.view_shopper(db, svc.keys.audit_key, shopper_id, actor=operator().name)
    if summary is None:
        abort(404)
    return render_template("console/shopper.html", summary=summary)


@bp.post("/shoppers/<shopper_id>/export")
@allow(OFFICER)
def shopper_export(shopper_id: str) -> Response:
    svc = services()
    with transaction(svc.sessions) as db:
        document = service.export_shopper(db, svc.keys.audit_key, shopper_id, actor=operator().name)
    body = json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False)
    return Response(
        body,
        mimetype="application/json",
        headers={"Content-Disposition": f'attachment; filename="facepay-{shopper_id}.json"'},
    )


@bp.route("/shoppers/<shopper_id>/delete", methods=["GET", "POST"])
@allow(OFFICER)
def shopper_delete(shopper_id: str) -> Any:
    svc = services()
    if request.method != "POST":  # GET, or the HEAD Flask adds: never the form's work
        with svc.sessions() as db:
            summary = service.shopper_summary(db, shopper_id)
        if summary is None or summary.shopper.status == privacy.DELETED:
            abort(404)
        return render_template("console/delete.html", summary=summary)
    if request.form.get("confirm") != "yes":
        flash("Tick the box to confirm the deletion.", "error")
        return redirect(url_for("console.shopper_delete", shopper_id=shopper_id))
    if not service.is_uuid(shopper_id):
        abort(404)
    with transaction(svc.sessions) as db:
        receipt = privacy.delete_shopper(
            db, shopper_id=shopper_id, keys=svc.keys, via="officer", actor=operator().name
        )
    # Committed: now the data key is destroyed and this process's index forgets the face.
    privacy.finish_deletions(svc, [shopper_id])
    return redirect(url_for("console.deletion", request_id=receipt.request_id))


@bp.get("/deletions/<request_id>")
@allow(OFFICER)
def deletion(request_id: str) -> str:
    with services().sessions() as db:
        found = service.deletion(db, request_id)
    if found is None:
        abort(404)
    return render_template("console/deletion.html", deletion=found)
