"""Privacy invariants.

After a full run through every path that touches a face (enrollment, payment, step-up, an
expired challenge, deletion at the kiosk, on the web and by a privacy officer, export on the
web and in the console, the retention purge), a scan of everything the server keeps or says
finds no template bytes, no image and no similarity score outside the encrypted store: the
database (every column of every table), the log records, the audit records, every response
and the development mails. On SQLite and PostgreSQL.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import re
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from flask.testing import FlaskClient
from sqlalchemy import MetaData, select, update

from server.db import transaction, utcnow
from server.operators import service as operators
from server.payments import service as payments
from server.payments.models import Payment
from server.privacy.retention import purge
from server.shoppers.models import Shopper
from tests.adversarial.conftest import Tally
from tests.support.kiosk import SigningKiosk
from tests.support.payments import SyntheticFace
from tests.unit.server.test_deletion import delete_me
from tests.unit.server.test_payments import enroll, pay, step_up
from tests.unit.server.test_shopper_web import ask, outbox, post, read_mail

IMAGE_MAGIC = {
    "JPEG": b"\xff\xd8\xff",
    "PNG": b"\x89PNG\r\n\x1a\n",
    "GIF": b"GIF8",
    "WEBP": b"WEBP",
}
SCORE_KEYS = {"score", "scores", "similarity", "distance", "cosine", "margin", "threshold"}
OFFICER, PASSWORD = "officer-ines", "correct horse battery staple"


class RecordingFace(SyntheticFace):
    """A synthetic face that remembers every vector it handed out (templates and probes)."""

    sent: list[np.ndarray]

    def __init__(self, rng: np.random.Generator) -> None:
        super().__init__(rng)
        self.sent = []

    def sample(self) -> np.ndarray:
        vector = super().sample()
        self.sent.append(vector)
        return vector


class Recorder:
    """Every response the watched test clients got: body and headers."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    def watch(self, client: FlaskClient) -> FlaskClient:
        original = client.open

        def recording_open(*args: Any, **kwargs: Any) -> Any:
            response = original(*args, **kwargs)
            self.bodies.append(response.get_data())
            self.bodies.append(str(dict(response.headers)).encode())
            return response

        client.open = recording_open  # type: ignore[method-assign]
        return client


def phone(number: int) -> str:
    return f"+1 514 555 {1000 + number}"


def csrf(client: FlaskClient, page: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', client.get(page).get_data(as_text=True))
    assert found, page
    return found.group(1)


def officer_session(app: Any, recorder: Recorder) -> FlaskClient:
    svc = app.extensions["facepay"]
    with transaction(svc.sessions) as session:
        operators.create(
            session,
            svc.keys.audit_key,
            name=OFFICER,
            role="privacy_officer",
            password=PASSWORD,
            actor="test",
        )
    console = recorder.watch(app.test_client())
    answer = console.post(
        "/console/login",
        data={"name": OFFICER, "password": PASSWORD, "csrf_token": csrf(console, "/console/login")},
    )
    assert answer.status_code == 302, answer.get_data(as_text=True)
    return console


def play_every_path(
    app: Any, client: FlaskClient, kiosk: SigningKiosk, recorder: Recorder
) -> list[RecordingFace]:
    """The story: every way a face, a probe or a shopper's data goes through the server."""
    svc = app.extensions["facepay"]
    rng = np.random.default_rng(99)
    faces = [RecordingFace(rng) for _ in range(5)]
    names = ["Amelie Roy", "Bruno Caron", "Chloe Gagnon", "Dania Haddad", "Elie Fortin"]
    ids = [
        enroll(client, kiosk, face, name=name, phone=phone(number))
        for number, (face, name) in enumerate(zip(faces, names, strict=True))
    ]
    for face in faces:
        assert pay(client, kiosk, face, 1_500).get_json()["status"] == "approved"
    # Step-up: answered, and left to expire (the held probe must go with it).
    challenge = pay(client, kiosk, faces[0], 20_000).get_json()
    assert challenge["status"] == "step_up_required"
    answered = step_up(client, kiosk, challenge, phone(0)[-4:]).get_json()
    assert answered["status"] == "approved", answered
    left = pay(client, kiosk, faces[1], 20_000).get_json()
    assert left["status"] == "step_up_required"
    with svc.sessions() as session:
        session.execute(
            update(Payment)
            .where(Payment.id == left["payment_id"])
            .values(expires_at=utcnow() - dt.timedelta(seconds=1))
        )
        session.commit()
    with transaction(svc.sessions) as session:
        payments.sweep(session, svc.keys)
    # A stranger is declined; a wrong phone ending deletes nothing.
    stranger = RecordingFace(rng)
    assert pay(client, kiosk, stranger, 700).get_json()["status"] == "declined"
    faces.append(stranger)
    assert delete_me(client, kiosk, faces[2], "0000").get_json()["status"] == "not_found"
    # Deletion at the kiosk.
    kiosk_deleted = delete_me(client, kiosk, faces[2], phone(2)[-4:]).get_json()
    assert kiosk_deleted["status"] == "deleted"
    # Export, then deletion, on the web.
    for purpose in ("export", "delete"):
        ask(client, "dania@example.com", purpose)
        _, code = read_mail(outbox(app)[-1])
        assert post(client, "/privacy/confirm", {"code": code}).status_code in (200, 303)
        if purpose == "delete":
            done = post(client, "/privacy/confirm/delete", {"understand": "yes"})
            assert done.status_code == 200
    # Export and deletion by a privacy officer.
    console = officer_session(app, recorder)
    target = f"/console/shoppers/{ids[4]}"
    exported = console.post(f"{target}/export", data={"csrf_token": csrf(console, target)})
    assert exported.status_code == 200 and exported.get_json()["shopper"]["id"] == ids[4]
    confirm = f"{target}/delete"
    deleted = console.post(confirm, data={"csrf_token": csrf(console, confirm)})
    assert deleted.status_code in (200, 302, 303), deleted.get_data(as_text=True)
    # The retention purge, with one shopper inactive.
    with svc.sessions() as session:
        session.execute(
            update(Shopper)
            .where(Shopper.id == ids[1])
            .values(last_activity_at=utcnow() - dt.timedelta(days=400))
        )
        session.commit()
    assert purge(svc.sessions, svc.keys, svc.settings, orphan_grace_s=0).inactive_shoppers
    return faces


def database_rows(app: Any) -> Iterator[tuple[str, str, Any]]:
    """(table, column, value) for every value of every row of every table."""
    engine = app.extensions["facepay"].engine
    metadata = MetaData()
    metadata.reflect(engine)
    with engine.connect() as connection:
        for table in metadata.sorted_tables:
            for row in connection.execute(select(table)):
                for column, value in row._mapping.items():
                    yield table.name, str(column), value


def as_bytes(value: Any) -> bytes:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    return str(value).encode("utf-8", "surrogatepass")


def template_needles(vectors: list[np.ndarray]) -> list[tuple[str, bytes]]:
    """How a template could appear: raw float32 bytes (whole, or its first 64 bytes), base64 of
    them, or its first values written out as text."""
    needles: list[tuple[str, bytes]] = []
    for vector in vectors:
        raw = np.asarray(vector, dtype="<f4").tobytes()
        needles.append(("template bytes", raw[:64]))
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            needles.append(("template base64", encode(raw)[:40]))
        for value in vector[:2]:
            needles.append(("template as text", repr(float(np.float32(value)))[:9].encode()))
    return needles


def score_needles(faces: list[RecordingFace]) -> list[bytes]:
    """The similarities the server computed (probe against every enrolled template), as text."""
    enrolled = [v for face in faces for v in face.sent[:3]]
    probes = [v for face in faces for v in face.sent[3:]]
    found: set[bytes] = set()
    for probe in probes:
        for template in enrolled:
            score = float(np.dot(probe, template))
            found.add(f"{score:.6f}".encode())
    return sorted(found)


def json_keys(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for key, inner in value.items():
            yield str(key).lower()
            yield from json_keys(inner)
    elif isinstance(value, list):
        for inner in value:
            yield from json_keys(inner)


def test_nothing_biometric_outside_the_encrypted_store(
    app: Any,
    client: FlaskClient,
    kiosk: SigningKiosk,
    caplog: pytest.LogCaptureFixture,
    tally: Tally,
) -> None:
    """Template bytes, images and scores: a scan after every path was played."""
    caplog.set_level(logging.DEBUG)
    recorder = Recorder()
    faces = play_every_path(app, recorder.watch(client), kiosk, recorder)

    vectors = [v for face in faces for v in face.sent]
    needles = template_needles(vectors)
    scores = score_needles(faces)
    mails = [path.read_bytes() for path in outbox(app)]
    rows = list(database_rows(app))
    artifacts: list[tuple[str, bytes]] = [
        (f"db {table}.{column}", as_bytes(value))
        for table, column, value in rows
        if value is not None
    ]
    artifacts += [("response", body) for body in recorder.bodies]
    artifacts += [("log", caplog.text.encode("utf-8", "surrogatepass"))]
    artifacts += [(f"mail {i}", mail) for i, mail in enumerate(mails)]
    assert len(recorder.bodies) > 50 and len(rows) > 100  # the scan has something to scan

    for where, blob in artifacts:
        leaks = [kind for kind, needle in needles if needle in blob]
        tally.case(not leaks, f"{where}: {sorted(set(leaks))}")
        images = [kind for kind, magic in IMAGE_MAGIC.items() if blob.startswith(magic)]
        tally.case(not images, f"{where}: looks like an image ({images})")
        # Ciphertexts are random bytes: a six-digit decimal in them means nothing.
        if not where.endswith((".ciphertext", ".sealed_probe", ".hash", ".public_key")):
            shown = [score for score in scores if score in blob]
            tally.case(not shown, f"{where}: a similarity score {shown[:3]}")

    documents: list[tuple[str, Any]] = []
    for where, blob in artifacts:
        if where == "response" or where.startswith("db audit_records.record"):
            try:
                documents.append((where, json.loads(blob)))
            except ValueError:
                continue
    for where, document in documents:
        keys = SCORE_KEYS & set(json_keys(document))
        tally.case(not keys, f"{where}: score-like keys {sorted(keys)}")

    held = [(t, c) for t, c, v in rows if (t, c) == ("payments", "sealed_probe") and v is not None]
    tally.case(not held, f"{len(held)} payments still hold a sealed probe")


# The story posts many forms from one address; the per-address limit is tested elsewhere.
pytestmark = pytest.mark.settings(form_rate_limit="")
