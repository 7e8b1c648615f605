"""Identification on real faces through the server's gallery: the rung chosen from the gallery's
size, fused templates, narrowing by phone digits, and the face-duplicate check."""

from __future__ import annotations

from typing import Any

import numpy as np
from flask.testing import FlaskClient

from server.matching.risk import Rung
from server.shoppers import service as shoppers
from tests.support.kiosk import SigningKiosk, enrollment_payload

PACK = "dlib-resnet-v1@1"
PHONES = {"p01": "+1 514 555 0101", "p02": "+1 514 555 0202", "p03": "+1 438 555 0101"}


def _enroll_three(
    client: FlaskClient, kiosk: SigningKiosk, faces: dict[str, list[np.ndarray]]
) -> dict[str, str]:
    policy = client.get("/v1/policy").get_json()
    ids = {}
    for person, phone in PHONES.items():
        payload = enrollment_payload(
            kiosk,
            policy,
            faces[person][:3],
            name=f"Person {person}",
            email=f"{person}@example.com",
            phone=phone,
        )
        body, headers = kiosk.signed("POST", "/v1/enrollments", payload)
        response = client.post("/v1/enrollments", data=body, headers=headers)
        assert response.status_code == 201, response.get_json()
        ids[person] = response.get_json()["shopper_id"]
    return ids


def test_identify_matches_and_narrows(
    app: Any, client: FlaskClient, kiosk: SigningKiosk, face_vectors: dict[str, list[np.ndarray]]
) -> None:
    ids = _enroll_three(client, kiosk, face_vectors)
    svc = app.extensions["facepay"]
    gallery = svc.gallery
    face_rung = gallery.rung(PACK)
    assert face_rung.rung is Rung.FACE  # the tests' lenient stranger target, three shoppers
    for person, phone in PHONES.items():
        probe = face_vectors[person][-1]  # a photo not used at enrollment
        decision = gallery.identify(PACK, probe, face_rung)
        assert (decision.outcome, decision.shopper_id) == ("match", ids[person])
        with svc.sessions() as session:
            narrowed = shoppers.with_phone_ending(session, svc.keys, phone[-4:])
            whole = shoppers.with_phone(session, svc.keys, phone)
        assert ids[person] in narrowed and whole == {ids[person]}
        last4 = gallery.rung(PACK, Rung.PHONE_LAST4)
        stepped = gallery.identify(PACK, probe, last4, restrict_to=narrowed)
        assert (stepped.outcome, stepped.shopper_id) == ("match", ids[person])
        one = gallery.identify(PACK, probe, gallery.rung(PACK, Rung.PHONE), restrict_to=whole)
        assert (one.outcome, one.shopper_id) == ("match", ids[person])
    # Two shoppers share the last four digits 0101: narrowing keeps both, and still decides.
    with svc.sessions() as session:
        assert shoppers.with_phone_ending(session, svc.keys, "0101") == {ids["p01"], ids["p03"]}
        # The whole number, typed any usual way, names one shopper.
        assert shoppers.with_phone(session, svc.keys, "(514) 555-0101") == {ids["p01"]}
        assert shoppers.with_phone(session, svc.keys, "+1 999 555 0101") == set()


def test_stranger_is_not_matched(
    app: Any, client: FlaskClient, kiosk: SigningKiosk, face_vectors: dict[str, list[np.ndarray]]
) -> None:
    _enroll_three(client, kiosk, face_vectors)
    gallery = app.extensions["facepay"].gallery
    for probe in face_vectors["p04"]:
        decision = gallery.identify(PACK, probe, gallery.rung(PACK))
        assert decision.outcome == "no_match" and decision.shopper_id is None


def test_the_gallery_keeps_one_fused_row_per_shopper(
    app: Any, client: FlaskClient, kiosk: SigningKiosk, face_vectors: dict[str, list[np.ndarray]]
) -> None:
    _enroll_three(client, kiosk, face_vectors)
    index = app.extensions["facepay"].gallery._indexes[PACK]
    assert len(index) == 3 and index.template_count == 3


def test_default_targets_ask_for_digits_before_any_search(
    app_config: dict[str, Any], face_vectors: dict[str, list[np.ndarray]]
) -> None:
    from server import create_app
    from server.cli import initialise
    from server.extensions import services

    strict = create_app({**app_config, "risk_stranger": 1e-4})
    with strict.app_context():
        initialise(services())
        services().start()
        gallery = services().gallery
        gallery._indexes[PACK].add("someone", np.stack(face_vectors["p01"][:1]))
        rung = gallery.rung(PACK)
    strict.extensions["facepay"].stop()
    assert rung.rung is Rung.PHONE_LAST4 and rung.threshold is not None
    assert rung.threshold >= gallery.base_threshold(PACK)
