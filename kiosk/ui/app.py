"""The customer screen's web app: one page, its state as JSON, the camera preview, and the
actions of the till and the shopper, served to this machine only.

Routes:

- ``GET /``: the page (server-rendered; a little JavaScript polls ``/state``);
- ``GET /state``: `kiosk.ui.state.state_document` of the runner's view;
- ``GET /preview.jpg``: the latest frame looked at, mirrored, with the face box drawn; only
  while the flow is looking, only to a loopback client, never cached, stored or logged;
- ``POST /actions/pay`` (amount "12.50" or amount_minor 1250, currency), ``/actions/enroll``
  (email, phone, wallet, currency), ``/actions/delete`` (phone_last4 or phone: "delete my
  face data"), ``/actions/agree`` (name), ``/actions/digits`` (digits: the step-up's answer,
  four digits or the full number as the state's ``keypad`` asks), ``/actions/cancel``,
  ``/actions/other-way``: JSON in, ``{"ok": true, "state": …}`` out.

A web page elsewhere must not be able to drive the kiosk through the shopper's browser, nor
read what it shows: every request must name this machine in its Host (no DNS rebinding) and
come from a loopback address; every action must carry the per-process token embedded in the
page (``X-Facepay-Token``, a header a cross-site form cannot send and a cross-site script can
only send after a CORS preflight this app never grants), a JSON body, and, when the browser
says where it comes from (Origin, Sec-Fetch-Site), come from this page's origin. Errors are
problem+json with a stable ``code`` and the words the screen shows.
"""

from __future__ import annotations

import hmac
import ipaddress
import re
import secrets
import urllib.parse
from decimal import Decimal, InvalidOperation
from typing import Any, NoReturn

from flask import Flask, Response, jsonify, render_template, request
from werkzeug.exceptions import HTTPException

from kiosk.errors import KioskError
from kiosk.money import parse_amount
from kiosk.runner import FACE_STATES, Runner
from kiosk.ui import texts
from kiosk.ui.state import state_document

TOKEN_HEADER = "X-Facepay-Token"
PROBLEM_JSON = "application/problem+json"
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})

# HTTP status of the flow's refusals; any other KioskError is 422.
_STATUS = {
    "kiosk_busy": 409,
    "no_consent_pending": 409,
    "no_step_up_pending": 409,
    "bad_host": 403,
    "not_local": 403,
    "bad_origin": 403,
    "bad_token": 403,
    "not_json": 415,
    "bad_request": 400,
}
_CURRENCY = re.compile(r"[A-Z]{3}")
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
_PHONE_PUNCTUATION = re.compile(r"[\s().+-]")
_PREVIEW_MAX_WIDTH = 960
_JPEG_QUALITY = 80


class UiError(KioskError):
    """A request the screen refuses (bad input, not from this machine, no token)."""

    code = "bad_request"


def create_ui(runner: Runner, *, token: str | None = None, locale: str | None = None) -> Flask:
    """The screen's app for `runner`. `token` (default: a fresh random one) is the secret the
    page sends with its actions; `locale` (default: the flow's) is the screen's first language
    (the other one is shown smaller)."""
    app = Flask(__name__)
    app.config.update(
        FACEPAY_TOKEN=token or secrets.token_urlsafe(32),
        FACEPAY_LOCALE=locale or runner.flow.settings.locale,
        JSON_SORT_KEYS=False,
        MAX_CONTENT_LENGTH=16 * 1024,
        SEND_FILE_MAX_AGE_DEFAULT=0,
    )
    app.json.ensure_ascii = False  # type: ignore[attr-defined]
    secret = app.config["FACEPAY_TOKEN"]
    first = app.config["FACEPAY_LOCALE"] if app.config["FACEPAY_LOCALE"] in texts.LOCALES else "en"
    second = next(other for other in texts.LOCALES if other != first)

    def state() -> dict[str, Any]:
        return state_document(runner.view, runner.preview())

    @app.before_request
    def only_this_machine() -> None:
        if _hostname(request.host) not in LOCAL_HOSTS:
            _refuse("bad_host", "this screen answers to 127.0.0.1 or localhost only")
        if not _loopback(request.remote_addr):
            _refuse("not_local", "this screen is served to this machine only")
        if request.method == "POST":
            _check_action(secret)

    @app.after_request
    def headers(response: Response) -> Response:
        response.headers["Cache-Control"] = "no-store"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["Content-Security-Policy"] = (
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
            "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
        )
        return response

    @app.errorhandler(KioskError)
    def kiosk_error(error: KioskError) -> Response:
        return _problem(_STATUS.get(error.code, 422), error.code, str(error))

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Response:
        status = error.code or 500
        code = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(
            status, "bad_request"
        )
        return _problem(status, code, error.description or error.name)

    @app.get("/")
    def page() -> str:
        return render_template(
            "screen.html",
            token=secret,
            first=first,
            second=second,
            labels=texts.LABELS,
            state=state(),
        )

    @app.get("/state")
    def get_state() -> Response:
        return jsonify(state())

    @app.get("/preview.jpg")
    def preview() -> Response:
        frame = runner.preview()
        if frame is None or runner.view.screen.state not in FACE_STATES:
            return _problem(404, "no_preview", "the camera preview shows only while looking")
        body = _jpeg(frame.image, frame.face_box)
        return Response(body, mimetype="image/jpeg")

    @app.post("/actions/pay")
    def pay() -> Response:
        data = _body()
        currency = _currency(data.get("currency", "CAD"))
        minor = _amount(data, currency)
        runner.start_payment(minor, currency)
        return _done(state())

    @app.post("/actions/enroll")
    def enroll() -> Response:
        data = _body()
        email = _text(data, "email")
        if not _EMAIL.fullmatch(email) or len(email) > 254:
            raise UiError(f"{email!r} is not an email address", code="bad_email")
        phone = _text(data, "phone")
        digits = _PHONE_PUNCTUATION.sub("", phone)
        if not digits.isdigit() or not 7 <= len(digits) <= 15:
            raise UiError("a phone number has 7 to 15 digits", code="bad_phone")
        currency = _currency(data.get("currency", "CAD"))
        wallet = _wallet(data.get("wallet", "0"), currency)
        runner.start_enrollment(email=email, phone=phone, wallet_amount=wallet, currency=currency)
        return _done(state())

    @app.post("/actions/delete")
    def delete() -> Response:
        data = _body()
        given = [name for name in ("phone_last4", "phone") if data.get(name) is not None]
        if len(given) != 1:
            raise UiError("a deletion takes phone_last4 or phone", code="bad_request")
        typed = _text(data, given[0])
        if given[0] == "phone":
            runner.start_deletion(phone=typed)
        else:
            runner.start_deletion(typed)
        return _done(state())

    @app.post("/actions/agree")
    def agree() -> Response:
        runner.agree(_text(_body(), "name", required=False))
        return _done(state())

    @app.post("/actions/digits")
    def digits() -> Response:
        runner.enter_digits(_text(_body(), "digits", required=False))
        return _done(state())

    @app.post("/actions/cancel")
    def cancel() -> Response:
        _body()
        runner.cancel()
        return _done(state())

    @app.post("/actions/other-way")
    def other_way() -> Response:
        _body()
        runner.pay_another_way()
        return _done(state())

    return app


# ---------------------------------------------------------------- checks


def _refuse(code: str, message: str) -> NoReturn:
    raise UiError(message, code=code)


def _hostname(host: str) -> str | None:
    """The host name of a Host header: "127.0.0.1:8080" -> "127.0.0.1", "[::1]:80" -> "::1"."""
    try:
        return urllib.parse.urlsplit(f"//{host}").hostname
    except ValueError:
        return None


def _loopback(address: str | None) -> bool:
    if not address:
        return False
    try:
        return ipaddress.ip_address(address.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def _check_action(secret: str) -> None:
    origin = request.headers.get("Origin")
    if origin is not None and origin != f"http://{request.host}":
        _refuse("bad_origin", "actions come from this screen's page only")
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site not in ("same-origin", "none"):
        _refuse("bad_origin", "actions come from this screen's page only")
    sent = request.headers.get(TOKEN_HEADER, "")
    if not hmac.compare_digest(sent.encode(), secret.encode()):
        _refuse("bad_token", f"an action needs this screen's {TOKEN_HEADER}")
    if request.content_length and not request.is_json:
        _refuse("not_json", "an action's body is a JSON object")


def _body() -> dict[str, Any]:
    if not request.content_length:
        return {}
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        raise UiError("an action's body is a JSON object", code="bad_request")
    return data


def _text(data: dict[str, Any], name: str, *, required: bool = True) -> str:
    value = data.get(name, "")
    if not isinstance(value, str) or len(value) > 200:
        raise UiError(f"{name} must be a short text", code=f"bad_{name}")
    if required and not value.strip():
        raise UiError(f"{name} is required", code=f"bad_{name}")
    return value.strip()


def _currency(value: Any) -> str:
    if not isinstance(value, str) or not _CURRENCY.fullmatch(value.strip().upper()):
        raise UiError(f"{value!r} is not an ISO 4217 currency code", code="bad_currency")
    return value.strip().upper()


def _amount(data: dict[str, Any], currency: str) -> int:
    """The amount due in minor units: `amount_minor` (1250) or `amount` ("12.50")."""
    if "amount_minor" in data:
        minor = data["amount_minor"]
        if isinstance(minor, bool) or not isinstance(minor, int) or minor <= 0:
            raise UiError("amount_minor is a positive whole number", code="bad_amount")
        return minor
    amount = data.get("amount")
    parsed = parse_amount(amount, currency) if isinstance(amount, str) else None
    if parsed is None:
        raise UiError(f"{amount!r} is not a positive amount in {currency}", code="bad_amount")
    return parsed


def _wallet(value: Any, currency: str) -> int:
    """The sandbox wallet to open, in minor units: "50.00" -> 5000; "0" or "" -> 0."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise UiError(f"{value!r} is not an amount in {currency}", code="bad_amount")
    text = str(value).strip() or "0"
    try:
        if Decimal(text) == 0:
            return 0
    except InvalidOperation:
        pass
    parsed = parse_amount(text, currency)
    if parsed is None:
        raise UiError(f"{value!r} is not an amount in {currency}", code="bad_amount")
    return parsed


# ---------------------------------------------------------------- answers


def _done(state: dict[str, Any]) -> Response:
    return jsonify({"ok": True, "state": state})


def _problem(status: int, code: str, detail: str) -> Response:
    shown = texts.ERRORS.get(code, texts.ERRORS["error"])
    body = {
        "type": f"https://facepay.dev/problems/{code}",
        "title": "The screen refused this request",
        "status": status,
        "code": code,
        "detail": detail,
        "text": shown,
    }
    response = jsonify(body)
    response.status_code = status
    response.mimetype = PROBLEM_JSON
    return response


def _jpeg(image: Any, box: tuple[int, int, int, int] | None) -> bytes:
    """The frame as the shopper sees themself: the face box drawn, mirrored, JPEG (in memory)."""
    import cv2

    picture = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    height, width = picture.shape[:2]
    if box is not None:
        left, top, right, bottom = box
        thickness = max(2, round(min(width, height) / 120))
        cv2.rectangle(picture, (left, top), (right, bottom), (0, 212, 255), thickness)
    picture = cv2.flip(picture, 1)
    if width > _PREVIEW_MAX_WIDTH:
        scale = _PREVIEW_MAX_WIDTH / width
        picture = cv2.resize(
            picture, (_PREVIEW_MAX_WIDTH, round(height * scale)), interpolation=cv2.INTER_AREA
        )
    ok, data = cv2.imencode(".jpg", picture, [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY])
    if not ok:
        raise UiError("the preview could not be encoded", code="preview_failed")
    return bytes(data.tobytes())
