"""The payments bench's instance: a server's settings and keys, paired kiosks, and shoppers
enrolled by bulk insert as enrollment leaves them (`bench/bench_payments.py`,
`tests/adversarial/test_load.py`).

Shoppers are simulated faces (`bench/simulated.py`, calibrated to the default pack): each
enrolled from 3 frames of one visit, with a unique phone number (`bench_phone`) whose keyed
hashes (last four digits, whole number) are written as enrollment writes them. The instance
keeps each shopper's identity centre, so that a payment's probe is a new visit of that face.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench import simulated
from bench.bench_gallery import PACK, PER_SHOPPER, bench_phone, insert_batch, shopper_batches
from server import create_app
from server.cli import initialise
from server.config import load_settings
from server.consent import service as consent
from server.consent.models import Consent
from server.crypto import SqliteKeyStore
from server.db import transaction, utcnow
from server.enrollment.models import Enrollment
from server.kiosks import service as kiosks
from server.ledger.models import FUNDING, WALLET, Account, Transfer
from server.ledger.service import SANDBOX_FUNDING
from server.matching import risk
from server.matching.service import known_packs, risk_targets
from server.shoppers.service import national_number
from tests.support.kiosk import SigningKiosk, register_kiosk

__all__ = [
    "Instance",
    "KioskKeys",
    "RungExpectation",
    "postgres_database",
    "postgres_reachable",
    "seed_instance",
    "server_environment",
    "server_settings",
]

CURRENCY = "CAD"
BALANCE = 10_000_000  # minor units per wallet: no payment is declined for funds
_CHUNK = 100_000  # shoppers simulated at a time while seeding


def server_settings(folder: Path, database_url: str) -> dict[str, str]:
    """The server's settings (by `Settings` field name), for `create_app` and for gunicorn:
    the defaults (the risk rule's targets among them), but for a daily limit that never
    declines a bench payment."""
    return {
        "instance": str(folder),
        "database_url": database_url,
        "limit_per_day": str(BALANCE),
    }


def server_environment(settings: dict[str, str]) -> dict[str, str]:
    """The FACEPAY_* variables for `settings` (each is FACEPAY_<FIELD>, see server/config.py)."""
    return {**os.environ, **{f"FACEPAY_{name.upper()}": value for name, value in settings.items()}}


@dataclass(frozen=True)
class RungExpectation:
    """What the risk rule asks at a gallery size, and what it computes for an honest shopper
    there: the share whose new capture passes the rung's threshold (the rest end with the
    step-up not matched: the face is below the threshold, and typing again cannot help)."""

    rung: str
    threshold: float | None
    face_passes: float

    @classmethod
    def at(cls, settings: dict[str, str], shoppers: int) -> RungExpectation:
        loaded = load_settings(settings)
        policy = known_packs()[PACK]
        chosen = risk.ladder(
            policy.curves,
            shoppers,
            risk_targets(loaded),
            base_threshold=policy.calibration.threshold(loaded.match_fmr),
        )
        if chosen.threshold is None:
            return cls(chosen.rung.value, None, 0.0)
        curves = policy.curves
        index = round((chosen.threshold - curves.thresholds[0]) / curves.step)
        return cls(chosen.rung.value, chosen.threshold, 1 - curves.genuine_below[index])


@dataclass(frozen=True)
class KioskKeys:
    """A paired kiosk as it travels to a load generator's process: id and raw keys."""

    kiosk_id: str
    private_key: bytes
    server_public_key: bytes

    @classmethod
    def of(cls, kiosk: SigningKiosk) -> KioskKeys:
        return cls(kiosk.kiosk_id, kiosk.private_key.private_bytes_raw(), kiosk.server_public_key)

    def signing(self) -> SigningKiosk:
        private = Ed25519PrivateKey.from_private_bytes(self.private_key)
        return SigningKiosk(self.kiosk_id, private, self.server_public_key)


@dataclass
class Instance:
    name: str
    settings: dict[str, str]
    kiosks: list[SigningKiosk]
    centres: np.ndarray  # shopper i's identity centre (row i), to draw new visits from
    seed_seconds: float
    postgres_database: str | None = None

    @property
    def environment(self) -> dict[str, str]:
        return server_environment(self.settings)

    @property
    def shoppers(self) -> int:
        return int(self.centres.shape[0])

    @staticmethod
    def phone(shopper: int) -> str:
        """Shopper `shopper`'s phone number, as they would type it."""
        return bench_phone(shopper)

    @staticmethod
    def answer(shopper: int, asked: str) -> dict[str, str]:
        """The shopper's right answer to a step-up asking `asked` (phone or phone_last4)."""
        phone = bench_phone(shopper)
        if asked == "phone":
            return {"phone": phone}
        return {"phone_last4": national_number(phone)[-4:]}


def seed_instance(
    name: str,
    settings: dict[str, str],
    shoppers: int,
    kiosk_count: int,
    rng: np.random.Generator,
) -> Instance:
    """Migrate, pair `kiosk_count` kiosks and enroll `shoppers` simulated shoppers with bulk
    inserts, using the very keys the server will load (created in the instance folder,
    development mode)."""
    app = create_app({**settings, "kiosk_rate_limit": ""})  # pairing many kiosks at once
    svc = app.extensions["facepay"]
    started = time.perf_counter()
    policy_version = initialise(svc)["policy_version"]
    with transaction(svc.sessions) as session:
        policy = consent.current(session)
        codes = [
            kiosks.add_kiosk(
                session, svc.keys.audit_key, name=f"till-{number}", store=f"Bench {number:02d}"
            ).pairing_code
            for number in range(kiosk_count)
        ]
    client = app.test_client()
    paired = [register_kiosk(client, code) for code in codes]
    text_sha256 = consent.text_sha256(policy.texts["en"])
    store = svc.keys.key_store
    assert isinstance(store, SqliteKeyStore), "the bench writes wrapped keys in batches"
    sim = simulated.simulator()
    centres = np.empty((shoppers, sim.model.dimension), np.float32)
    funding_id = str(uuid.uuid4())
    with svc.engine.begin() as connection:
        # The sandbox's funding account pays every opening transfer, as `open_wallet` does.
        connection.execute(
            Account.__table__.insert(),  # type: ignore[attr-defined]
            [
                {
                    "id": funding_id,
                    "kind": FUNDING,
                    "owner": SANDBOX_FUNDING,
                    "currency": CURRENCY,
                    "debits_posted": BALANCE * shoppers,
                    "credits_posted": 0,
                    "debits_held": 0,
                }
            ],
        )
        for first in range(0, shoppers, _CHUNK):
            count = min(_CHUNK, shoppers - first)
            enrolled = simulated.enrolled(sim, count, rng)
            assert enrolled.frames is not None
            centres[first : first + count] = enrolled.centres
            ids = [str(uuid.uuid4()) for _ in range(count)]
            for batch in shopper_batches(
                ids, enrolled.frames, svc.keys.master, keys=svc.keys, first=first
            ):
                insert_batch(connection, store, batch)
                rows = enrollment_rows(
                    [row["id"] for row in batch.shoppers],
                    kiosk_id=paired[0].kiosk_id,
                    policy_version=policy_version,
                    text_sha256=text_sha256,
                    funding_id=funding_id,
                )
                for table, values in rows:
                    connection.execute(table.insert(), values)
    svc.stop()
    store.close()
    return Instance(name, settings, paired, centres, time.perf_counter() - started)


def enrollment_rows(
    shopper_ids: list[str],
    *,
    kiosk_id: str,
    policy_version: int,
    text_sha256: str,
    funding_id: str,
) -> list[tuple[Any, list[dict[str, Any]]]]:
    """What `server.enrollment.service.enroll` adds beside the shopper and templates: consent,
    enrollment, a wallet funded by an opening transfer (the change feed and the audit record
    are left out: the gallery loads from the tables, and nothing here reads the chain)."""
    consents, enrollments, wallets, openings = [], [], [], []
    for shopper_id in shopper_ids:
        consent_id, wallet_id = str(uuid.uuid4()), str(uuid.uuid4())
        consents.append(
            {
                "id": consent_id,
                "shopper_id": shopper_id,
                "policy_version": policy_version,
                "locale": "en",
                "text_sha256": text_sha256,
                "signature_name": "Bench Shopper",
                "signed_at": utcnow(),
                "kiosk_id": kiosk_id,
            }
        )
        enrollments.append(
            {
                "id": str(uuid.uuid4()),
                "shopper_id": shopper_id,
                "consent_id": consent_id,
                "kiosk_id": kiosk_id,
                "pack": PACK,
                "template_count": PER_SHOPPER,
            }
        )
        wallets.append(
            {
                "id": wallet_id,
                "kind": WALLET,
                "owner": shopper_id,
                "currency": CURRENCY,
                "debits_posted": 0,
                "credits_posted": BALANCE,
                "debits_held": 0,
            }
        )
        openings.append(
            {
                "id": str(uuid.uuid4()),
                "debit_account": funding_id,
                "credit_account": wallet_id,
                "amount": BALANCE,
                "currency": CURRENCY,
                "kind": "opening",
                "reference": shopper_id,
            }
        )
    return [
        (Consent.__table__, consents),
        (Enrollment.__table__, enrollments),
        (Account.__table__, wallets),
        (Transfer.__table__, openings),
    ]


# ---------------------------------------------------------------- PostgreSQL


def postgres_reachable(admin_url: str) -> bool:
    import sqlalchemy as sa

    engine = sa.create_engine(admin_url, connect_args={"connect_timeout": 2})
    try:
        with engine.connect():
            return True
    except sa.exc.OperationalError:
        return False
    finally:
        engine.dispose()


@contextlib.contextmanager
def postgres_database(admin_url: str) -> Iterator[tuple[str, str]]:
    """A fresh database for one run (its URL and name), dropped afterwards whatever happens."""
    import sqlalchemy as sa

    name = f"facepay_bench_{secrets.token_hex(6)}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield sa.make_url(admin_url).set(database=name).render_as_string(hide_password=False), name
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
