"""The runner's view as the JSON the page polls (`GET /state`): what to show, in both languages.

No frame, template or score is in it: the face box is four pixel coordinates of the preview,
and the notice is the text the shopper signs (in the flow's locale, like kiosk.flow sends).
"""

from __future__ import annotations

from typing import Any

from kiosk.flow import Result
from kiosk.phone import MAX_PHONE_DIGITS, MIN_PHONE_DIGITS, PHONE, PHONE_LAST4
from kiosk.runner import FACE_STATES, Preview, View
from kiosk.ui import texts

# The flow's states in which the shopper can leave the session ("pay another way", cancel).
SESSION_STATES = frozenset({"consent", "looking", "liveness", "sending", "step_up"})


def state_document(view: View, preview: Preview | None) -> dict[str, Any]:
    screen = view.screen
    in_face_state = screen.state in FACE_STATES
    frame = None
    if in_face_state and preview is not None:
        height, width = preview.image.shape[:2]
        frame = {"seq": preview.seq, "width": int(width), "height": int(height)}
    result = screen.result if screen.state == "done" else None
    prompt_table = texts.OUTCOMES if screen.state == "done" else texts.PROMPTS
    if screen.state != "done" and screen.prompt not in texts.PROMPTS:
        prompt_table = texts.OUTCOMES  # a result key shown as a prompt
    return {
        "state": screen.state,
        "mode": screen.mode,
        "locale": view.locale,
        "session": screen.state in SESSION_STATES,
        "prompt": {"key": screen.prompt, "text": texts.text(prompt_table, screen.prompt)},
        "amount": _money(screen.amount, screen.currency),
        "face_box": list(screen.face_box) if in_face_state and screen.face_box else None,
        "frame": frame,
        "notice": _notice(screen.notice, view.locale) if screen.state == "consent" else None,
        "tries_left": screen.tries_left if screen.state == "step_up" else None,
        "keypad": _keypad(screen.step_up_ask) if screen.state == "step_up" else None,
        "result": _result(result, screen.currency) if result is not None else None,
        "other_ways": [
            {"key": key, "text": texts.text(texts.OTHER_WAYS, key)} for key in screen.other_ways
        ],
        "problem": (
            {"code": view.problem.code, "text": texts.text(texts.PROBLEMS, view.problem.code)}
            if view.problem is not None
            else None
        ),
    }


def _money(minor: int | None, currency: str | None) -> dict[str, Any] | None:
    if minor is None or currency is None:
        return None
    return {"minor": minor, "currency": currency, "text": texts.money(minor, currency)}


def _keypad(asked: str | None) -> dict[str, Any]:
    """What the step-up's keypad takes: the last four digits, or the full number (digits
    only: the page shows them grouped)."""
    if asked == PHONE:
        return {"ask": PHONE, "min_digits": MIN_PHONE_DIGITS, "max_digits": MAX_PHONE_DIGITS}
    return {"ask": PHONE_LAST4, "min_digits": 4, "max_digits": 4}


def _notice(policy: dict[str, Any] | None, locale: str) -> dict[str, Any] | None:
    """The notice in the language that will be signed (the flow's locale, else English)."""
    if not policy:
        return None
    notices = policy.get("texts") or {}
    shown = locale if locale in notices else "en"
    entry = notices.get(shown)
    if not isinstance(entry, dict) or not isinstance(entry.get("text"), str):
        return None
    return {
        "version": policy.get("version"),
        "locale": shown,
        "text": entry["text"],
        "retention_days": policy.get("retention_days"),
    }


def _result(result: Result, currency: str | None) -> dict[str, Any]:
    reason = texts.REASONS.get(result.code)  # why, where there is more to say than the title
    return {
        "outcome": result.outcome,
        "code": result.code,
        "ok": result.ok,
        "title": texts.text(texts.OUTCOMES, result.outcome),
        "reason": reason,
        "label": result.shopper_label,
        "balance": (
            _money(result.wallet_balance, currency or "CAD")
            if result.wallet_balance is not None
            else None
        ),
    }
