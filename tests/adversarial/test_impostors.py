"""Impostors at the step-up.

Another person's real face with a victim's phone digits, and strangers with random digits, at
the default risk targets: through the API on real labelled photos (SQLite and PostgreSQL), and
through the server's decision code on a simulated gallery of 100,000 shoppers. The pack's
operating range is FMR about 1e-3, so a look-alike can pass one attempt in a thousand: where
that is the case the check is the rate (at most what the risk rule allows, by a binomial bound
at 99.9%), and what bounds a determined attacker is the number of attempts a day.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest
from flask.testing import FlaskClient
from scipy.stats import binom

from models.manifest import bundled_manifests
from server.matching.risk import RiskTargets, Rung, rung_risk
from server.matching.simulation import Runner, Trials
from tests.adversarial.conftest import LONG, Tally
from tests.support.kiosk import SigningKiosk, enrollment_payload
from tests.support.payments import new_key
from tests.unit.server.conftest import DEFAULT_RISK
from tests.unit.server.test_payments import signed

CALIBRATION = bundled_manifests()["dlib-resnet-v1"].calibration
assert CALIBRATION is not None and CALIBRATION.curves is not None
BASE = CALIBRATION.threshold(1e-3)


@pytest.fixture
def app_config(app_config: dict[str, Any]) -> dict[str, Any]:
    return {**app_config, **DEFAULT_RISK}


def _phone(identity: str) -> str:
    return f"+1 514 555 {int(identity[1:]):04d}"


def _enroll(client: FlaskClient, kiosk: SigningKiosk, identity: str, frames: list[Any]) -> str:
    policy = client.get("/v1/policy").get_json()
    payload = enrollment_payload(
        kiosk,
        policy,
        frames,
        name=f"Person {identity}",
        email=f"{identity}@example.com",
        phone=_phone(identity),
        wallet=100_000,
    )
    response = signed(client, kiosk, "POST", "/v1/enrollments", payload)
    assert response.status_code == 201, response.get_json()
    shopper_id: str = response.get_json()["shopper_id"]
    return shopper_id


def _attempt(client: FlaskClient, kiosk: SigningKiosk, probe: Any, **typed: str) -> dict[str, Any]:
    """A $150 payment with this face, the step-up answered with the digits typed."""
    payload = {
        "amount": 15_000,
        "currency": "CAD",
        "capture_method": "automatic",
        "probe": kiosk.seal(probe, purpose="pay"),
    }
    answer: dict[str, Any] = signed(
        client, kiosk, "POST", "/v1/payments", payload, key=new_key()
    ).get_json()
    if answer["status"] != "step_up_required":
        return answer
    path = f"/v1/payments/{answer['payment_id']}/step-up"
    body = {"challenge_id": answer["challenge_id"], **typed}
    result: dict[str, Any] = signed(client, kiosk, "POST", path, body, key=new_key()).get_json()
    return result


def test_real_impostor_faces_with_the_victims_digits(
    app: Any,
    client: FlaskClient,
    kiosk: SigningKiosk,
    labelled_vectors: tuple[np.ndarray, list[str]],
    tally: Tally,
) -> None:
    """Real impostor faces with a victim's phone digits succeed no more than the rule allows."""
    vectors, identities = labelled_vectors
    by_identity: dict[str, list[int]] = {}
    for row, identity in enumerate(identities):
        by_identity.setdefault(identity, []).append(row)
    # Victims: everyone with at least four photos, enrolled from their first three.
    victims = {
        identity: _enroll(client, kiosk, identity, [vectors[i] for i in rows[:3]])
        for identity, rows in sorted(by_identity.items())
        if len(rows) >= 4
    }
    gallery = app.extensions["facepay"].gallery
    rung = gallery.rung("dlib-resnet-v1@1")
    assert rung.rung is Rung.PHONE_LAST4 and rung.risk is not None
    # Per attempt on one victim the rule allows f(t), the one-try part of its targeted rate.
    tries_a_day = app.extensions["facepay"].settings.step_up_failures_per_day
    allowed = 1 - (1 - rung.risk.targeted) ** (1 / tries_a_day)
    successes_by_victim: dict[str, int] = {}
    per_victim = len(identities) if LONG else 15  # attackers' photos tried on each victim
    for victim in victims:
        others = [row for row, who in enumerate(identities) if who != victim]
        impostors = others[:: max(1, len(others) // per_victim)]
        wins = 0
        for row in impostors:
            answer = _attempt(client, kiosk, vectors[row], phone_last4=_phone(victim)[-4:])
            wins += answer["status"] == "approved"
        successes_by_victim[victim] = wins
        bound = int(binom.ppf(0.999, len(impostors), allowed))
        tally.case(wins <= bound, f"{victim}: {wins} of {len(impostors)} approved (bound {bound})")
    tally.figures["victims"] = len(victims)
    tally.figures["approved"] = sum(successes_by_victim.values())
    assert tally.handled == tally.tried, tally.failures


def test_the_issues_reproduction_p11_on_p12(
    client: FlaskClient,
    kiosk: SigningKiosk,
    face_vectors: dict[str, list[np.ndarray]],
    tally: Tally,
) -> None:
    """p11's photos with p12's digits, which used to pay on p12's wallet, are declined."""
    _enroll(client, kiosk, "p12", face_vectors["p12"][:3])
    for probe, typed in itertools.product(face_vectors["p11"], ("last4", "whole")):
        answer = (
            _attempt(client, kiosk, probe, phone_last4=_phone("p12")[-4:])
            if typed == "last4"
            else _attempt(client, kiosk, probe, phone=_phone("p12"))
        )
        tally.case(answer["status"] != "approved", f"p11 photo with p12's {typed}: approved")
    assert tally.handled == tally.tried, tally.failures


def test_strangers_with_random_digits(
    client: FlaskClient,
    kiosk: SigningKiosk,
    face_vectors: dict[str, list[np.ndarray]],
    tally: Tally,
) -> None:
    """Strangers' real faces with random phone digits are declined."""
    for identity in ("p01", "p02", "p03"):
        _enroll(client, kiosk, identity, face_vectors[identity][:3])
    rng = np.random.default_rng(11)
    strangers = face_vectors["p04"] + face_vectors["p11"] + face_vectors["p12"]
    for probe in strangers * (4 if LONG else 2):
        digits = f"{int(rng.integers(0, 10_000)):04d}"
        answer = _attempt(client, kiosk, probe, phone_last4=digits)
        tally.case(answer["status"] != "approved", f"stranger with {digits}: approved")
    assert tally.handled == tally.tried, tally.failures


def test_simulated_gallery_impostors(tally: Tally) -> None:
    """Impostors on a simulated gallery of 100,000 shoppers stay within every target."""
    targets = RiskTargets()
    runner = Runner(CALIBRATION, targets, base_threshold=BASE, seed=19)
    scale = 1.0 if LONG else 0.2
    trials = Trials(
        honest=int(20_000 * scale),
        stranger=int(100_000 * scale),
        targeted=int(20_000 * scale),
        duplicate=int(2_000 * scale),
    )
    figures = runner.run(100_000, trials)
    assert figures["rung"] == "phone"
    stranger = figures["stranger_success_per_attempt"]
    targeted = figures["targeted_success_per_day"]
    honest = figures["honest_wrong_wallet_per_payment"]
    tally.case(
        stranger["hits"] == 0, f"strangers approved: {stranger['hits']} of {stranger['trials']}"
    )
    tally.case(honest["hits"] == 0, f"honest payments on another wallet: {honest['hits']}")
    day_bound = int(binom.ppf(0.999, targeted["trials"], targets.targeted))
    tally.case(
        targeted["hits"] <= day_bound,
        f"targeted victims lost: {targeted['hits']} of {targeted['trials']} (bound {day_bound})",
    )
    rule = rung_risk(CALIBRATION.curves, Rung.PHONE, 100_000, targets, base_threshold=BASE)
    tally.case(
        rule.risk is not None and rule.risk.targeted <= targets.targeted, "rule's targeted rate"
    )
    tally.figures.update(
        {
            name: figures[name]["measured"]
            for name in ("stranger_success_per_attempt", "targeted_success_per_day")
        }
    )
    assert tally.handled == tally.tried, tally.failures
