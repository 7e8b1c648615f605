"""`facepay server ledger check`, `payments refund` and `payments expire`, on both databases."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import numpy as np
from flask.testing import FlaskClient
from sqlalchemy import update

from server.audit.service import events_about
from server.ledger.models import Account
from server.payments.models import Payment
from server.privacy.service import export_shopper
from tests.support.kiosk import SigningKiosk
from tests.support.payments import SyntheticFace
from tests.unit.server.test_payments import assert_declined, enroll, pay, wallet_balance


def test_ledger_check_passes_then_fails_when_totals_are_edited(
    app: Any, client: FlaskClient, kiosk: SigningKiosk, cli: Any
) -> None:
    face = SyntheticFace(np.random.default_rng(5))
    enroll(client, kiosk, face, wallet=10_000)
    assert pay(client, kiosk, face, 2_500).get_json()["status"] == "approved"
    passed = cli("ledger", "check", "--json")
    assert passed.exit_code == 0, passed.output
    report = json.loads(passed.output)
    assert report["ok"] and (report["transfers"], report["payments"]) == (2, 1)

    with app.extensions["facepay"].sessions() as session:
        session.execute(
            update(Account)
            .where(Account.kind == "store")
            .values(credits_posted=Account.credits_posted + 1)
        )
        session.commit()
    failed = cli("ledger", "check")
    assert failed.exit_code == 1
    assert "totals differ from its transfers" in failed.output


def test_refund_from_the_command_line_once_per_key(
    app: Any, client: FlaskClient, kiosk: SigningKiosk, cli: Any
) -> None:
    face = SyntheticFace(np.random.default_rng(6))
    shopper = enroll(client, kiosk, face, wallet=10_000)
    payment_id = pay(client, kiosk, face, 4_000).get_json()["payment_id"]
    args = ["payments", "refund", payment_id, "--amount", "1000", "--operator", "dana"]
    first = cli(*args, "--idempotency-key", "refund-1", "--json")
    again = cli(*args, "--idempotency-key", "refund-1", "--json")
    assert first.exit_code == again.exit_code == 0, first.output
    assert json.loads(first.output) == json.loads(again.output)
    assert json.loads(first.output)["refunded_amount"] == 1_000
    assert wallet_balance(app, shopper) == 7_000
    too_much = cli("payments", "refund", payment_id, "--amount", "3001", "--operator", "dana")
    assert too_much.exit_code == 2 and "refund_exceeds_captured" in too_much.output
    rest = cli("payments", "refund", payment_id, "--operator", "dana")
    assert rest.exit_code == 0 and "4000 of 4000" in rest.output
    assert wallet_balance(app, shopper) == 10_000
    assert cli("ledger", "check").exit_code == 0


def test_expire_sweeps_stale_authorizations(
    app: Any, client: FlaskClient, kiosk: SigningKiosk, cli: Any
) -> None:
    face = SyntheticFace(np.random.default_rng(8))
    shopper = enroll(client, kiosk, face, wallet=10_000)
    held = pay(client, kiosk, face, 3_000, capture_method="manual").get_json()
    with app.extensions["facepay"].sessions() as session:
        session.execute(
            update(Payment)
            .where(Payment.id == held["payment_id"])
            .values(expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1))
        )
        session.commit()
    assert wallet_balance(app, shopper) == 7_000
    result = cli("payments", "expire", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {
        "authorizations": 1,
        "challenges": 0,
        "idempotency_keys": 0,
    }
    assert wallet_balance(app, shopper) == 10_000
    assert cli("ledger", "check").exit_code == 0


def test_a_shoppers_own_limits_apply_where_lower_than_the_servers(
    app: Any, client: FlaskClient, kiosk: SigningKiosk, cli: Any
) -> None:
    face = SyntheticFace(np.random.default_rng(9))
    shopper = enroll(client, kiosk, face, wallet=100_000)
    shown = cli("payments", "limits", shopper, "--json")
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output) == {
        "shopper_id": shopper,
        "limit_per_payment": 50_000,  # the server's defaults
        "limit_per_day": 100_000,
        "own_limit_per_payment": None,
        "own_limit_per_day": None,
    }

    dana = ["--operator", "dana", "--json"]
    lowered = cli(
        "payments", "limits", shopper, "--per-payment", "2000", "--per-day", "3000", *dana
    )
    assert lowered.exit_code == 0, lowered.output
    assert json.loads(lowered.output)["limit_per_payment"] == 2_000
    with app.extensions["facepay"].sessions() as session:
        exported = export_shopper(session, shopper)["shopper"]  # the shopper's own data
    assert (exported["own_limit_per_payment"], exported["own_limit_per_day"]) == (2_000, 3_000)
    outcomes = [
        pay(client, kiosk, face, amount).get_json() for amount in (2_001, 2_000, 1_001, 1_000)
    ]
    assert [o["status"] for o in outcomes] == ["declined", "approved", "declined", "approved"]
    assert_declined(app, outcomes[0], "limit_exceeded")  # over their own per-payment limit
    assert_declined(app, outcomes[2], "limit_exceeded")  # 3,001 in a day, over their 3,000

    # Only the per-day limit changes; one above the server's leaves the server's in force.
    raised = cli("payments", "limits", shopper, "--per-day", "500000", *dana)
    assert json.loads(raised.output) == {
        "shopper_id": shopper,
        "limit_per_payment": 2_000,
        "limit_per_day": 100_000,
        "own_limit_per_payment": 2_000,
        "own_limit_per_day": 500_000,
    }
    cleared = cli("payments", "limits", shopper, "--clear", *dana)
    assert json.loads(cleared.output)["own_limit_per_payment"] is None
    assert pay(client, kiosk, face, 2_500).get_json()["status"] == "approved"

    with app.extensions["facepay"].sessions() as session:
        kinds = [event["kind"] for event in events_about(session, shopper)]
    assert kinds.count("shopper.limits_set") == 3
    assert cli("ledger", "check").exit_code == 0


def test_shopper_limits_refuse_bad_requests(
    client: FlaskClient, kiosk: SigningKiosk, cli: Any
) -> None:
    shopper = enroll(client, kiosk, SyntheticFace(np.random.default_rng(10)))
    anonymous = cli("payments", "limits", shopper, "--per-day", "1000")
    assert anonymous.exit_code == 2 and "--operator is needed" in anonymous.output
    both = cli("payments", "limits", shopper, "--clear", "--per-day", "1", "--operator", "dana")
    assert both.exit_code == 2 and "give it alone" in both.output
    negative = cli("payments", "limits", shopper, "--per-payment", "0", "--operator", "dana")
    assert negative.exit_code == 2 and "0" in negative.output
    unknown = cli("payments", "limits", "no-such-shopper", "--json")
    assert unknown.exit_code == 2 and json.loads(unknown.output)["code"] == "shopper_not_found"
