"""Enrollment with consent: checks, then one transaction that creates the shopper, their
consent record, their data key and encrypted templates, their wallet, and the audit record."""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy.orm import Session

from server.audit.service import record_event
from server.consent import service as consent
from server.consent.models import Consent
from server.crypto import (
    CryptoError,
    DataKey,
    KeyStoreError,
    seal,
    template_associated_data,
    wrap_data_key,
)
from server.enrollment.models import Enrollment, Template
from server.errors import ProblemError, Unavailable
from server.keys import InstanceKeys
from server.kiosks.models import Kiosk
from server.ledger import service as ledger
from server.matching.service import Gallery, record_change
from server.shoppers import service as shoppers
from server.shoppers.models import Shopper
from server.templates import (
    TemplateInvalid,
    b64decode,
    decode_vector,
    encode_vector,
    transport_associated_data,
)

logger = logging.getLogger(__name__)


class TemplateRejected(ProblemError):
    status_code = 422
    code = "template_invalid"
    title = "A template is not valid"


class AlreadyEnrolled(ProblemError):
    """Refused by claim: the email address or phone number is an account's already (a kiosk
    retrying an enrollment that went through gets this too)."""

    status_code = 409
    code = "already_enrolled"
    title = "This email address or phone number already has an account"


class LivenessRequired(ProblemError):
    status_code = 422
    code = "liveness_required"
    title = "A passed liveness check is required"


def open_templates(
    items: list[Mapping[str, Any]],
    *,
    kiosk_id: str,
    purpose: str,
    keys: InstanceKeys,
    gallery: Gallery,
    liveness_required: bool,
) -> tuple[str, str, list[npt.NDArray[np.float32]]]:
    """Unseal and validate the templates of one request: one known pack, finite, unit length.

    Every request that matches a face comes through here first: while this process's gallery
    is not loaded (still loading, or the key store unreadable at start-up) it is refused with
    503, never matched against an empty or partial gallery."""
    if not gallery.loaded:
        raise Unavailable(
            "the gallery is not loaded yet; nothing was done, send the request again",
            code="gallery_not_ready",
            retry_after_s=5,
        )
    packs = {item["pack"] for item in items}
    if len(packs) != 1:
        raise TemplateRejected(
            "all templates of a request must come from one pack", code="mixed_packs"
        )
    pack = packs.pop()
    if pack not in gallery.packs:
        raise TemplateRejected(f"pack {pack!r} is not accepted here", code="unknown_pack")
    checks = {item["liveness"] for item in items}
    liveness = "none" if "none" in checks else sorted(checks)[0]
    if liveness_required and liveness == "none":
        raise LivenessRequired("this server accepts only templates that passed a liveness check")
    dimension = gallery.packs[pack].manifest.embedding_size
    vectors = []
    for item in items:
        try:
            raw = keys.sealing.open(
                b64decode(item["sealed"]),
                transport_associated_data(
                    kiosk_id=kiosk_id, pack=pack, purpose=purpose, liveness=item["liveness"]
                ),
            )
            vectors.append(decode_vector(raw, dimension))
        except TemplateInvalid as exc:
            raise TemplateRejected(str(exc), code=exc.code) from None
        except CryptoError:
            raise TemplateRejected(
                "a template could not be unsealed", code="template_unsealable"
            ) from None
    return pack, liveness, vectors


def masked_label(name: str) -> str:
    parts = [p for p in re.split(r"\s+", name.strip()) if p]
    if not parts:
        return "Shopper"
    first = parts[0][:24]
    return f"{first} {parts[-1][0].upper()}." if len(parts) > 1 else first


@dataclass(frozen=True)
class Enrolled:
    enrollment_id: str
    shopper_id: str
    masked_label: str
    pack: str
    wallet_balance: int
    currency: str
    # The account whose face this one's matched (see `enroll`): told by mail after the commit.
    # Never part of the kiosk's answer.
    face_duplicate_of: str | None = None


def enroll(
    session: Session,
    *,
    body: Mapping[str, Any],
    kiosk: Kiosk,
    keys: InstanceKeys,
    gallery: Gallery,
    liveness_required: bool,
) -> Enrolled:
    agreed = body["consent"]
    policy = consent.check_agreement(
        session,
        version=agreed["policy_version"],
        locale=agreed["locale"],
        sha256=agreed["text_sha256"],
    )
    pack, liveness, vectors = open_templates(
        body["templates"],
        kiosk_id=kiosk.id,
        purpose="enroll",
        keys=keys,
        gallery=gallery,
        liveness_required=liveness_required,
    )
    # Duplicates by claim are refused: a phone number names one account (the full-number
    # step-up finds its one shopper by it), and so does an email address.
    contact = body["contact"]
    digits = shoppers.phone_digits(contact["phone"])
    if len(digits) < 7:
        raise ProblemError("the phone number is too short", code="bad_phone", status=422)
    if shoppers.claimed_by(session, keys, email=contact["email"], phone=contact["phone"]):
        raise AlreadyEnrolled(
            "an account already uses this email address or phone number; "
            "to enroll again, delete that account first"
        )
    # A face duplicate is declared only at a threshold whose false-duplicate chance at this
    # gallery's size is within target (none at all in a large gallery), and never refuses:
    # the kiosk's answer is the same as for anyone; the existing account's owner is told by
    # mail, and the audit log keeps it against their record.
    duplicate_of = gallery.face_duplicate(pack, vectors)
    record_event(
        session,
        keys.audit_key,
        "match.attempt",
        actor=kiosk.id,
        data={
            "purpose": "enroll",
            "pack": pack,
            "outcome": "no_match" if duplicate_of is None else "face_duplicate",
            "liveness": liveness,
        },
    )
    name = agreed["signature_name"].strip()
    shopper = Shopper(
        id=str(uuid.uuid4()),
        full_name=name,
        masked_label=masked_label(name),
        email=contact["email"].strip().lower(),
        phone=contact["phone"].strip(),
        phone_last4_hash=keys.phone_last4_hash(digits[-4:]),
        phone_hash=keys.phone_hash(shoppers.national_number(digits)),
    )
    session.add(shopper)
    session.flush()
    agreement = Consent(
        id=str(uuid.uuid4()),
        shopper_id=shopper.id,
        policy_version=policy.version,
        locale=agreed["locale"],
        text_sha256=agreed["text_sha256"],
        signature_name=name,
        signed_at=agreed["signed_at"],
        kiosk_id=kiosk.id,
    )
    session.add(agreement)

    data_key = DataKey.generate()
    for vector in vectors:
        template_id = str(uuid.uuid4())
        session.add(
            Template(
                id=template_id,
                shopper_id=shopper.id,
                pack=pack,
                liveness=liveness,
                ciphertext=seal(
                    data_key,
                    encode_vector(vector),
                    template_associated_data(shopper.id, template_id, pack),
                ),
            )
        )
    enrollment = Enrollment(
        id=str(uuid.uuid4()),
        shopper_id=shopper.id,
        consent_id=agreement.id,
        kiosk_id=kiosk.id,
        pack=pack,
        template_count=len(vectors),
    )
    session.add(enrollment)
    wallet = body["wallet"]
    balance = ledger.open_wallet(
        session, shopper.id, currency=wallet["currency"], opening_amount=wallet["amount"]
    )
    record_change(session, kind="add_shopper", shopper_id=shopper.id, pack=pack)
    if duplicate_of is not None:
        record_event(
            session,
            keys.audit_key,
            "shopper.face_duplicate",
            subject=duplicate_of,
            actor=kiosk.id,
            data={"store": kiosk.store, "pack": pack, "notified": "email"},
        )
    record_event(
        session,
        keys.audit_key,
        "shopper.enrolled",
        subject=shopper.id,
        actor=kiosk.id,
        data={
            "enrollment_id": enrollment.id,
            "pack": pack,
            "template_count": len(vectors),
            "policy_version": policy.version,
            "locale": agreed["locale"],
            "liveness": liveness,
            "store": kiosk.store,
        },
    )
    session.flush()
    # The data key goes to the key store last: if anything above failed, no key is left behind
    # (and a key without a committed shopper is harmless and pruned by the purge). If the store
    # cannot take it, nothing is committed: a shopper without a key could never be matched.
    try:
        keys.key_store.put(shopper.id, wrap_data_key(keys.master, data_key, shopper.id))
    except KeyStoreError as exc:
        logger.error("enrollment refused: the key store cannot be written: %s", type(exc).__name__)
        raise Unavailable(
            "the shopper key store cannot be written; nothing was enrolled, try again",
            code="key_store_unavailable",
            retry_after_s=5,
        ) from exc
    return Enrolled(
        enrollment.id,
        shopper.id,
        shopper.masked_label,
        pack,
        balance,
        wallet["currency"],
        face_duplicate_of=duplicate_of,
    )
