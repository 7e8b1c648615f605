"""Identification on real faces through the server's gallery: match, step-up, narrowing."""

from __future__ import annotations

from typing import Any

import numpy as np
from flask.testing import FlaskClient

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


def test_identify_matches_steps_up_and_narrows(
    app: Any, client: FlaskClient, kiosk: SigningKiosk, face_vectors: dict[str, list[np.ndarray]]
) -> None:
    ids = _enroll_three(client, kiosk, face_vectors)
    svc = app.extensions["facepay"]
    gallery = svc.gallery
    outcomes = []
    for person in PHONES:
        probe = face_vectors[person][-1]  # a photo not used at enrollment
        decision = gallery.identify(PACK, probe)
        assert decision.outcome in ("match", "step_up"), decision
        if decision.outcome == "match":
            assert decision.shopper_id == ids[person]
        outcomes.append(decision.outcome)
        with svc.sessions() as session:
            narrowed = shoppers.with_phone_ending(session, svc.keys, PHONES[person][-4:])
        assert ids[person] in narrowed
        stepped = gallery.identify(PACK, probe, restrict_to=narrowed)
        assert (stepped.outcome, stepped.shopper_id) == ("match", ids[person])
    # Two shoppers share the last four digits 0101: narrowing keeps both, and still decides.
    with svc.sessions() as session:
        assert shoppers.with_phone_ending(session, svc.keys, "0101") == {ids["p01"], ids["p03"]}


def test_stranger_is_not_matched(
    app: Any, client: FlaskClient, kiosk: SigningKiosk, face_vectors: dict[str, list[np.ndarray]]
) -> None:
    _enroll_three(client, kiosk, face_vectors)
    gallery = app.extensions["facepay"].gallery
    for probe in face_vectors["p04"]:
        decision = gallery.identify(PACK, probe)
        assert decision.outcome == "no_match" and decision.shopper_id is None


def test_fpir_target_forces_step_up(
    app_config: dict[str, Any], face_vectors: dict[str, list[np.ndarray]]
) -> None:
    from server import create_app
    from server.cli import initialise
    from server.extensions import services

    strict = create_app({**app_config, "target_fpir": 1e-9})
    with strict.app_context():
        initialise(services())
        services().start()
        gallery = services().gallery
        index = gallery._indexes[PACK]
        index.add("someone", np.stack(face_vectors["p01"][:3]))
        decision = gallery.identify(PACK, face_vectors["p01"][-1])
    strict.extensions["facepay"].stop()
    assert (decision.outcome, decision.reason) == ("step_up", "fpir_above_target")
