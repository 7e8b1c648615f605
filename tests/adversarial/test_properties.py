"""Property tests (Hypothesis).

Template validation, money parsing, idempotency and the ledger, each against inputs Hypothesis
makes up: whatever comes in, the answer is a valid value or the documented refusal, never a
crash; a key runs its work once; money is neither created nor lost.
"""

from __future__ import annotations

import json
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.orm import Session

from kiosk.money import minor_digits, parse_amount
from server.db import Base, make_engine, make_session_factory
from server.errors import ProblemError
from server.idempotency import models as _idempotency_models
from server.idempotency import service as idempotency
from server.ledger import service as ledger
from server.payments import service as payments
from server.templates import TemplateInvalid, b64decode, decode_vector
from tests.adversarial.conftest import LONG, Tally
from tests.support.kiosk import SigningKiosk
from tests.support.payments import SyntheticFace
from tests.unit.server.test_payments import enroll, pay, signed

EXAMPLES = 2_000 if LONG else 300
QUICK = settings(
    max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck)
)
TEMPLATE_CODES = {"template_wrong_length", "template_not_finite", "template_not_unit"}


def test_template_validation(tally: Tally) -> None:
    """Template validation: arbitrary bytes and vectors."""

    @QUICK
    @given(
        raw=st.one_of(
            st.binary(max_size=2_100),
            st.lists(
                st.floats(width=32, allow_nan=True, allow_infinity=True), min_size=128, max_size=128
            ).map(lambda values: np.asarray(values, dtype="<f4").tobytes()),
            st.lists(
                st.floats(-1, 1, width=32, allow_subnormal=False), min_size=128, max_size=128
            ).map(_unit_bytes),
        ),
        dimension=st.sampled_from([128, 512]),
    )
    def check(raw: bytes, dimension: int) -> None:
        try:
            vector = decode_vector(raw, dimension)
        except TemplateInvalid as refused:
            tally.case(refused.code in TEMPLATE_CODES, f"unknown code {refused.code}")
            return
        except Exception as error:
            tally.case(False, f"{type(error).__name__} escaped")
            return
        norm = float(np.linalg.norm(vector.astype(np.float64)))
        tally.case(
            vector.shape == (dimension,)
            and bool(np.all(np.isfinite(vector)))
            and abs(norm - 1) < 1e-3,
            "accepted a template that is not a finite unit vector of the pack's size",
        )

    check()

    @QUICK
    @given(text=st.text(max_size=200))
    def check_base64(text: str) -> None:
        try:
            b64decode(text)
            tally.case(True, "")
        except TemplateInvalid as refused:
            tally.case(refused.code == "template_malformed", refused.code)
        except Exception as error:
            tally.case(False, f"base64: {type(error).__name__} escaped")

    check_base64()


def _unit_bytes(values: list[float]) -> bytes:
    vector = np.asarray(values, dtype=np.float64)
    norm = np.linalg.norm(vector)
    if norm == 0:
        vector[0], norm = 1.0, 1.0
    return (vector / norm).astype("<f4").tobytes()


def test_money_parsing(tally: Tally) -> None:
    """Money parsing: typed amounts, valid and not."""
    currencies = st.sampled_from(["CAD", "USD", "JPY", "KWD", "EUR"])

    @QUICK
    @given(text=st.text(max_size=30), currency=currencies)
    def anything(text: str, currency: str) -> None:
        try:
            parsed = parse_amount(text, currency)
        except Exception as error:
            tally.case(False, f"{text!r}: {type(error).__name__} escaped")
            return
        tally.case(
            parsed is None or (isinstance(parsed, int) and parsed > 0), f"{text!r} -> {parsed}"
        )

    @QUICK
    @given(minor=st.integers(1, 10**12 - 1), currency=currencies)
    def round_trip(minor: int, currency: str) -> None:
        digits = minor_digits(currency)
        text = str(Decimal(minor).scaleb(-digits).quantize(Decimal(1).scaleb(-digits)))
        tally.case(parse_amount(text, currency) == minor, f"{text} {currency} != {minor}")
        if digits:
            too_fine = text + "1"  # one decimal more than the currency has
            tally.case(parse_amount(too_fine, currency) is None, f"{too_fine} {currency} accepted")

    anything()
    round_trip()


@pytest.fixture
def sessions(tmp_path: Path) -> Any:
    engine = make_engine(f"sqlite:///{tmp_path / 'idempotency.db'}")
    Base.metadata.create_all(engine, tables=[_idempotency_models.IdempotencyKey.__table__])
    yield make_session_factory(engine)
    engine.dispose()


def test_idempotency_runs_each_key_once(sessions: Any, tally: Tally) -> None:
    """Idempotency: random sequences of keys and parameters."""
    runs: dict[str, int] = {}
    answers: dict[str, tuple[int, dict[str, Any]]] = {}
    first_params: dict[str, dict[str, Any]] = {}

    @settings(
        max_examples=max(30, EXAMPLES // 10),
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(
        steps=st.lists(
            st.tuples(st.sampled_from(["k1", "k2", "k3"]), st.integers(1, 3), st.booleans()),
            min_size=1,
            max_size=12,
        )
    )
    def check(steps: list[tuple[str, int, bool]]) -> None:
        scope = f"kiosk:{uuid.uuid4()}"  # a fresh scope per example: keys start unused
        runs.clear(), answers.clear(), first_params.clear()
        for key, amount, fails in steps:
            params = {"amount": amount}

            def work(
                session: Session, key: str = key, fails: bool = fails
            ) -> tuple[int, dict[str, Any]]:
                runs[key] = runs.get(key, 0) + 1
                if fails:
                    raise ProblemError("declined here", status=409, code="declined")
                return 201, {"key": key, "run": runs[key]}

            try:
                outcome = idempotency.run(
                    sessions,
                    scope=scope,
                    key=key,
                    fingerprint=idempotency.fingerprint("POST", "/v1/payments", params),
                    lease_s=10,
                    work=work,
                )
            except ProblemError as refused:
                handled = key in first_params and first_params[key] != params
                tally.case(
                    handled and refused.code == "idempotency_key_reused",
                    f"{key}: {refused.code}",
                )
                continue
            if key not in first_params:
                first_params[key], answers[key] = params, (outcome.status, outcome.body)
                tally.case(runs.get(key) == 1, f"{key} ran {runs.get(key)} times")
            else:
                tally.case(
                    first_params[key] == params
                    and (outcome.status, outcome.body) == answers[key]
                    and runs[key] == 1,
                    f"{key}: replay differs or work ran again",
                )

    check()


def test_ledger_under_random_operations(
    app: Any, client: FlaskClient, kiosk: SigningKiosk, tally: Tally
) -> None:
    """Ledger: random payments, captures, voids, refunds and expiries."""
    svc = app.extensions["facepay"]
    rng = np.random.default_rng(91)
    faces = [SyntheticFace(rng) for _ in range(3)]
    shoppers = [
        enroll(
            client, kiosk, face, name=f"Shopper{i} Test", phone=f"+1 514 555 10{i}0", wallet=50_000
        )
        for i, face in enumerate(faces)
    ]
    operation = st.one_of(
        st.tuples(st.just("pay"), st.integers(0, 2), st.integers(1, 9_000), st.booleans()),
        st.tuples(st.just("capture"), st.integers(0, 50), st.integers(1, 9_000), st.just(False)),
        st.tuples(st.just("void"), st.integers(0, 50), st.just(0), st.just(False)),
        st.tuples(st.just("refund"), st.integers(0, 50), st.integers(1, 9_000), st.just(False)),
        st.tuples(st.just("expire"), st.just(0), st.just(0), st.just(False)),
    )
    made: list[str] = []

    @settings(
        max_examples=40 if LONG else 8,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(steps=st.lists(operation, min_size=1, max_size=10))
    def check(steps: list[tuple[str, int, int, bool]]) -> None:
        for verb, which, amount, manual in steps:
            if verb == "pay":
                answer = pay(
                    client,
                    kiosk,
                    faces[which],
                    amount,
                    capture_method="manual" if manual else "automatic",
                )
                tally.case(answer.status_code in (201, 200), f"pay: {answer.status_code}")
                if answer.status_code == 201 and answer.get_json()["status"] == "approved":
                    made.append(answer.get_json()["payment_id"])
            elif made and verb in ("capture", "void"):
                path = f"/v1/payments/{made[which % len(made)]}/{verb}"
                body = {"amount": amount} if verb == "capture" else {}
                answer = signed(client, kiosk, "POST", path, body, key=str(uuid.uuid4()))
                tally.case(answer.status_code < 500, f"{verb}: {answer.status_code}")
            elif made and verb == "refund":
                with svc.sessions() as session:
                    try:
                        with session.begin():
                            payments.refund(
                                session,
                                payment_id=made[which % len(made)],
                                amount=amount,
                                operator="property-test",
                                reason="",
                                keys=svc.keys,
                            )
                        tally.case(True, "")
                    except ProblemError as refused:
                        tally.case(refused.status_code in (404, 409, 422), refused.code)
            elif verb == "expire":
                with svc.sessions() as session, session.begin():
                    payments.sweep(session, svc.keys)
                tally.case(True, "")
            with svc.sessions() as session:
                report = ledger.check(session)
                tally.case(report.ok, f"ledger check after {verb}: {report.problems[:2]}")
                for shopper_id in shoppers:
                    wallet = ledger.wallet_of(session, shopper_id)
                    tally.case(
                        wallet is not None and wallet.available >= 0,
                        f"wallet of {shopper_id} overdrawn",
                    )

    check()
    with svc.sessions() as session:
        report = ledger.check(session)
    assert report.ok, report.problems
    assert json.dumps(report.problems) == "[]"
