"""Enrollment through the API on SQLite and PostgreSQL: consent, sealing, validation, duplicates."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from flask.testing import FlaskClient
from sqlalchemy import select

from server.crypto import DecryptionError, open_, template_associated_data, unwrap_data_key
from server.enrollment.models import Template
from server.shoppers.models import Shopper
from tests.support.kiosk import SigningKiosk, enrollment_payload


def _post(
    client: FlaskClient, kiosk: SigningKiosk, payload: Any, path: str = "/v1/enrollments"
) -> Any:
    body, headers = kiosk.signed("POST", path, payload)
    return client.post(path, data=body, headers=headers)


def _policy(client: FlaskClient) -> dict[str, Any]:
    response = client.get("/v1/policy")
    assert response.status_code == 200
    data: dict[str, Any] = response.get_json()
    return data


def test_policy_is_public_and_bilingual(client: FlaskClient) -> None:
    policy = _policy(client)
    assert policy["version"] == 1 and set(policy["texts"]) == {"en", "fr"}
    assert policy["retention_days"] == 365 and policy["other_ways_to_pay"] is True
    assert "consent" in policy["texts"]["en"]["text"].lower()
    assert "consentement" in policy["texts"]["fr"]["text"].lower()


def test_enrollment_round_trip(
    app: Any, client: FlaskClient, kiosk: SigningKiosk, face_vectors: dict[str, list[np.ndarray]]
) -> None:
    response = _post(
        client, kiosk, enrollment_payload(kiosk, _policy(client), face_vectors["p01"][:3])
    )
    assert response.status_code == 201, response.get_json()
    data = response.get_json()
    assert (
        data["masked_label"] == "Marie T."
        and data["wallet_balance"] == 10_000
        and data["pack"] == "dlib-resnet-v1@1"
    )
    text = response.get_data(as_text=True)
    assert "sealed" not in text and "template" not in text.lower()

    svc = app.extensions["facepay"]
    with svc.sessions() as session:
        shopper = session.get(Shopper, data["shopper_id"])
        assert shopper is not None and shopper.status == "active"
        assert "0142" not in shopper.phone_last4_hash
        templates = session.scalars(select(Template).where(Template.shopper_id == shopper.id)).all()
        assert len(templates) == 3
        key = unwrap_data_key(svc.keys.masters, svc.keys.key_store.get(shopper.id), shopper.id)
        stored = [
            np.frombuffer(
                open_(key, t.ciphertext, template_associated_data(shopper.id, t.id, t.pack)), "<f4"
            )
            for t in templates
        ]
        sent = face_vectors["p01"][:3]
        assert sorted(float(s @ s) for s in stored) == pytest.approx([1.0] * 3, abs=1e-5)
        assert all(any(np.allclose(s, v) for v in sent) for s in stored)
        # No plaintext template bytes anywhere in the row.
        for t in templates:
            for vector in sent:
                assert vector.astype("<f4").tobytes()[:32] not in t.ciphertext
    assert svc.gallery.sizes()["dlib-resnet-v1@1"] == 1


def test_moved_ciphertext_fails_to_open(
    app: Any, client: FlaskClient, kiosk: SigningKiosk, face_vectors: dict[str, list[np.ndarray]]
) -> None:
    policy = _policy(client)
    first = _post(
        client, kiosk, enrollment_payload(kiosk, policy, face_vectors["p01"][:3])
    ).get_json()
    second = _post(
        client,
        kiosk,
        enrollment_payload(
            kiosk,
            policy,
            face_vectors["p02"][:3],
            name="Jean Roy",
            email="j@example.com",
            phone="+1 514 555 0177",
        ),
    ).get_json()
    svc = app.extensions["facepay"]
    with svc.sessions() as session:
        a = session.scalars(
            select(Template).where(Template.shopper_id == first["shopper_id"])
        ).all()
        b = session.scalars(
            select(Template).where(Template.shopper_id == second["shopper_id"])
        ).all()
        key_a = unwrap_data_key(
            svc.keys.masters, svc.keys.key_store.get(first["shopper_id"]), first["shopper_id"]
        )
        # Another row of the same shopper: the template id differs, so the data no longer binds.
        with pytest.raises(DecryptionError):
            open_(
                key_a,
                a[0].ciphertext,
                template_associated_data(first["shopper_id"], a[1].id, a[0].pack),
            )
        # Another shopper's row.
        with pytest.raises(DecryptionError):
            open_(
                key_a,
                a[0].ciphertext,
                template_associated_data(second["shopper_id"], b[0].id, a[0].pack),
            )
        # Another pack.
        with pytest.raises(DecryptionError):
            open_(
                key_a,
                a[0].ciphertext,
                template_associated_data(first["shopper_id"], a[0].id, "buffalo_l@0.7"),
            )


def test_a_second_enrollment_is_refused_by_claim_and_a_face_is_never_refused_with_a_hint(
    client: FlaskClient, kiosk: SigningKiosk, face_vectors: dict[str, list[np.ndarray]]
) -> None:
    """The same email or phone is refused (409 already_enrolled, naming nobody). The same
    face under other contact details is enrolled like anyone: refusing it would tell the
    kiosk that this face is enrolled (test_step_up_ladder.py shows the notice the existing
    account gets)."""
    policy = _policy(client)
    photos = face_vectors["p01"]
    assert _post(client, kiosk, enrollment_payload(kiosk, policy, photos[:3])).status_code == 201
    again = _post(
        client,
        kiosk,
        enrollment_payload(
            kiosk,
            policy,
            photos[-3:],
            name="Someone Else",
            email="x@example.com",
            phone="+1 (514) 555-0142",  # Marie's number, typed another way
        ),
    )
    assert again.status_code == 409
    problem = again.get_json()
    assert again.mimetype == "application/problem+json" and problem["code"] == "already_enrolled"
    assert "Marie" not in again.get_data(as_text=True)
    same_face = _post(
        client,
        kiosk,
        enrollment_payload(
            kiosk, policy, photos[-3:], name="Someone Else", email="x@example.com", phone="5550199"
        ),
    )
    assert same_face.status_code == 201
    other = _post(
        client,
        kiosk,
        enrollment_payload(
            kiosk,
            policy,
            face_vectors["p03"][:3],
            name="Luc B",
            email="l@example.com",
            phone="5550123",
        ),
    )
    assert other.status_code == 201


def _unit(rng: np.random.Generator, size: int = 128) -> np.ndarray:
    vector = rng.normal(size=size).astype(np.float32)
    return vector / np.linalg.norm(vector)


@pytest.mark.parametrize(
    ("mutate", "code"),
    [
        (lambda v: np.full_like(v, np.nan), "template_not_finite"),
        (
            lambda v: np.where(np.arange(v.size) == 0, np.inf, v).astype(np.float32),
            "template_not_finite",
        ),
        (lambda v: v[:100], "template_wrong_length"),
        (lambda v: v * 2, "template_not_unit"),
    ],
)
def test_bad_templates_get_422(
    client: FlaskClient, kiosk: SigningKiosk, mutate: Any, code: str
) -> None:
    rng = np.random.default_rng(1)
    vectors = [_unit(rng) for _ in range(3)]
    vectors[1] = mutate(vectors[1])
    response = _post(client, kiosk, enrollment_payload(kiosk, _policy(client), vectors))
    assert response.status_code == 422
    assert response.get_json()["code"] == code


def test_wrong_and_mixed_packs_get_422(client: FlaskClient, kiosk: SigningKiosk) -> None:
    rng = np.random.default_rng(2)
    policy = _policy(client)
    payload = enrollment_payload(
        kiosk, policy, [_unit(rng, 512) for _ in range(3)], pack="buffalo_l@0.7"
    )
    response = _post(client, kiosk, payload)
    assert response.status_code == 422 and response.get_json()["code"] == "unknown_pack"
    mixed = enrollment_payload(kiosk, policy, [_unit(rng) for _ in range(3)])
    mixed["templates"][2] = kiosk.seal(_unit(rng, 512), purpose="enroll", pack="buffalo_l@0.7")
    response = _post(client, kiosk, mixed)
    assert response.status_code == 422 and response.get_json()["code"] == "mixed_packs"


def test_template_sealed_for_another_purpose_is_refused(
    client: FlaskClient, kiosk: SigningKiosk
) -> None:
    rng = np.random.default_rng(3)
    payload = enrollment_payload(kiosk, _policy(client), [_unit(rng) for _ in range(3)])
    payload["templates"][0] = kiosk.seal(_unit(rng), purpose="pay")
    response = _post(client, kiosk, payload)
    assert response.status_code == 422 and response.get_json()["code"] == "template_unsealable"


@pytest.mark.parametrize("count", [2, 6])
def test_template_count_is_three_to_five(
    client: FlaskClient, kiosk: SigningKiosk, count: int
) -> None:
    rng = np.random.default_rng(4)
    response = _post(
        client,
        kiosk,
        enrollment_payload(kiosk, _policy(client), [_unit(rng) for _ in range(count)]),
    )
    assert response.status_code == 422 and response.get_json()["code"] == "validation_failed"


def test_stale_or_altered_consent_is_refused(
    app: Any, client: FlaskClient, kiosk: SigningKiosk
) -> None:
    rng = np.random.default_rng(5)
    policy = _policy(client)
    payload = enrollment_payload(kiosk, policy, [_unit(rng) for _ in range(3)])
    payload["consent"]["text_sha256"] = "0" * 64
    response = _post(client, kiosk, payload)
    assert response.status_code == 422 and response.get_json()["code"] == "consent_invalid"

    from server.consent import service as consent
    from server.db import transaction

    with transaction(app.extensions["facepay"].sessions) as session:
        consent.publish(session, {"en": "New notice.", "fr": "Nouvel avis."})
    stale = enrollment_payload(kiosk, policy, [_unit(rng) for _ in range(3)])
    response = _post(client, kiosk, stale)
    assert response.status_code == 409 and response.get_json()["code"] == "consent_stale"
    missing = enrollment_payload(kiosk, _policy(client), [_unit(rng) for _ in range(3)])
    del missing["consent"]
    response = _post(client, kiosk, missing)
    assert response.status_code == 422


def test_liveness_policy(
    app_config: dict[str, Any], face_vectors: dict[str, list[np.ndarray]]
) -> None:
    from server import create_app
    from server.cli import initialise
    from server.db import transaction
    from server.extensions import services
    from server.kiosks import service
    from tests.support.kiosk import register_kiosk

    strict = create_app({**app_config, "require_liveness": True})
    with strict.app_context():
        initialise(services())
        services().start()
        svc = services()
        with transaction(svc.sessions) as session:
            code = service.add_kiosk(session, svc.keys.audit_key, name="t", store="s").pairing_code
    try:
        client = strict.test_client()
        kiosk = register_kiosk(client, code)
        policy = _policy(client)
        refused = _post(client, kiosk, enrollment_payload(kiosk, policy, face_vectors["p04"][:3]))
        assert refused.status_code == 422 and refused.get_json()["code"] == "liveness_required"
        passed = _post(
            client,
            kiosk,
            enrollment_payload(kiosk, policy, face_vectors["p04"][:3], liveness="active-challenge"),
        )
        assert passed.status_code == 201
    finally:
        strict.extensions["facepay"].stop()


def test_no_template_or_score_in_the_audit_log(
    app: Any, client: FlaskClient, kiosk: SigningKiosk, face_vectors: dict[str, list[np.ndarray]]
) -> None:
    from server.audit.models import AuditRecord

    _post(client, kiosk, enrollment_payload(kiosk, _policy(client), face_vectors["p01"][:3]))
    _post(
        client,
        kiosk,
        enrollment_payload(
            kiosk, _policy(client), face_vectors["p01"][-3:], email="z@example.com", phone="5550199"
        ),
    )
    with app.extensions["facepay"].sessions() as session:
        records = [json.loads(r.record) for r in session.scalars(select(AuditRecord))]
    kinds = [r["kind"] for r in records]
    assert kinds.count("match.attempt") == 2 and "shopper.enrolled" in kinds
    for record in records:
        text = json.dumps(record)
        assert "score" not in text and "similarity" not in text and "embedding" not in text
