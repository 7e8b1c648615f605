"""`facepay server …`: initialise, run, manage kiosks and keys, verify the audit chain and the
ledger, refund payments."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


def _emit(as_json: bool, data: dict[str, Any], text: str) -> None:
    click.echo(json.dumps(data, sort_keys=True, default=str) if as_json else text)


@contextmanager
def _app() -> Iterator[Any]:
    from server import create_app
    from server.extensions import services

    app = create_app()
    with app.app_context():
        try:
            yield services()
        finally:
            services().engine.dispose()


def initialise(svc: Any) -> dict[str, Any]:
    """Migrate the schema to head and publish the default consent notice if none exists."""
    from server import migrate
    from server.consent import service as consent
    from server.db import transaction

    migrate.upgrade(svc.engine)
    with transaction(svc.sessions) as session:
        policy = consent.ensure_default(session)
    return {
        "database": svc.engine.url.render_as_string(hide_password=True),
        "policy_version": policy.version,
    }


@click.group("server")
def server_group() -> None:
    """The facepay server."""


@server_group.command("init")
@json_option
def init(as_json: bool) -> None:
    """Create or upgrade the database and publish the default consent notice."""
    with _app() as svc:
        result = initialise(svc)
    _emit(
        as_json,
        result,
        f"database ready at {result['database']}; consent notice v{result['policy_version']}",
    )


@server_group.command("run")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
def run(host: str, port: int) -> None:
    """Run the development server (production: gunicorn 'server.wsgi:app')."""
    from server import create_app
    from server.extensions import services

    app = create_app()
    with app.app_context():
        initialise(services())
        services().serve()
    app.run(host=host, port=port, threaded=True, use_reloader=False)


@server_group.group("policy")
def policy_group() -> None:
    """The consent notice shown at enrollment."""


@policy_group.command("show")
@json_option
def policy_show(as_json: bool) -> None:
    from server.consent import service as consent

    with _app() as svc, svc.sessions() as session:
        policy = consent.current(session)
    data = policy.as_dict()
    lines = [
        f"version {policy.version}, retention {policy.retention_days} days, "
        f"effective {policy.effective_at:%Y-%m-%d}"
    ]
    lines += [
        f"  {locale}: sha256 {consent.text_sha256(text)}" for locale, text in policy.texts.items()
    ]
    text = "\n".join(lines)
    _emit(as_json, data, text)


@policy_group.command("publish")
@click.option(
    "--text",
    "texts",
    multiple=True,
    required=True,
    metavar="LOCALE=FILE",
    help="The notice's full text in one locale, e.g. --text en=notice.en.txt --text fr=avis.fr.txt",
)
@click.option("--purpose", default=None, help="The purpose statement (default: the shipped one).")
@click.option("--retention-days", type=click.IntRange(1, 3 * 365), default=None)
@json_option
def policy_publish(
    texts: tuple[str, ...], purpose: str | None, retention_days: int | None, as_json: bool
) -> None:
    """Publish a new version of the notice; shoppers enroll against the newest one."""
    from server.audit.service import record_event
    from server.consent import service as consent
    from server.db import transaction

    by_locale: dict[str, str] = {}
    for item in texts:
        locale, _, path = item.partition("=")
        if not locale or not path:
            raise click.UsageError(f"--text takes LOCALE=FILE, not {item!r}")
        by_locale[locale.strip()] = Path(path).read_text(encoding="utf-8")
    with _app() as svc, transaction(svc.sessions) as session:
        previous = consent.current(session)
        policy = consent.publish(
            session,
            by_locale,
            purpose=purpose or previous.purpose,
            retention_days=retention_days or previous.retention_days,
        )
        record_event(
            session,
            svc.keys.audit_key,
            "policy.published",
            actor="cli",
            data={"version": policy.version, "locales": sorted(by_locale)},
        )
    _emit(
        as_json,
        policy.as_dict(),
        f"consent notice v{policy.version} published ({', '.join(sorted(by_locale))})",
    )


@server_group.group("kiosk")
def kiosk_group() -> None:
    """Kiosks: add (prints a one-time pairing code), revoke, list."""


@kiosk_group.command("add")
@click.argument("name")
@click.option("--store", required=True)
@json_option
def kiosk_add(name: str, store: str, as_json: bool) -> None:
    from server.db import transaction
    from server.kiosks import service

    with _app() as svc, transaction(svc.sessions) as session:
        created = service.add_kiosk(session, svc.keys.audit_key, name=name, store=store)
    data = {
        "kiosk_id": created.kiosk_id,
        "pairing_code": created.pairing_code,
        "expires_at": created.expires_at,
    }
    if as_json:
        _emit(True, data, "")
        return
    click.echo(
        f"kiosk {created.kiosk_id} ({name}, {store}) added; "
        f"pairing code valid until {created.expires_at:%Y-%m-%d %H:%M} UTC:"
    )
    click.echo(created.pairing_code)


@kiosk_group.command("revoke")
@click.argument("kiosk_id")
@json_option
def kiosk_revoke(kiosk_id: str, as_json: bool) -> None:
    from server.db import transaction
    from server.kiosks import service

    with _app() as svc, transaction(svc.sessions) as session:
        kiosk = service.revoke(session, svc.keys.audit_key, kiosk_id)
        data = {"kiosk_id": kiosk.id, "status": kiosk.status}
    _emit(as_json, data, f"kiosk {kiosk_id} revoked")


@kiosk_group.command("list")
@json_option
def kiosk_list(as_json: bool) -> None:
    from sqlalchemy import select

    from server.kiosks.models import Kiosk

    with _app() as svc, svc.sessions() as session:
        rows = [
            {"kiosk_id": k.id, "name": k.name, "store": k.store, "status": k.status}
            for k in session.scalars(select(Kiosk).order_by(Kiosk.created_at))
        ]
    if as_json:
        click.echo(json.dumps(rows))
        return
    for row in rows:
        click.echo(f"{row['kiosk_id']}  {row['status']:<8} {row['store']:<20} {row['name']}")


@server_group.command("rotate-master-key")
@json_option
def rotate_master_key(as_json: bool) -> None:
    """Re-wrap every shopper data key under a new master key; templates are not touched."""
    from server import keys as instance_keys
    from server.audit.service import record_event
    from server.crypto import MasterKey
    from server.crypto import rotate_master_key as rotate
    from server.db import transaction

    with _app() as svc:
        settings = svc.settings
        path = instance_keys.key_paths(settings)["master"]
        old = svc.keys.master
        new_path = path.with_name(f"{path.name}.next")
        new = (
            MasterKey.load(new_path) if new_path.exists() else MasterKey.generate_to_file(new_path)
        )
        count = rotate(svc.keys.key_store, {old.key_id: old}, new)
        retired = path.with_name(f"{path.name}.retired-{old.key_id}")
        path.rename(retired)
        new_path.rename(path)
        with transaction(svc.sessions) as session:
            record_event(
                session,
                svc.keys.audit_key,
                "keys.master_rotated",
                actor="cli",
                data={"old": old.key_id, "new": new.key_id, "rewrapped_count": count},
            )
    _emit(
        as_json,
        {
            "old_key_id": old.key_id,
            "new_key_id": new.key_id,
            "rewrapped": count,
            "retired_file": str(retired),
        },
        f"re-wrapped {count} data keys under {new.key_id}; the old master key is at {retired} "
        "(destroy it once backups of the key store have rolled over)",
    )


@server_group.group("audit")
def audit_group() -> None:
    """The tamper-evident audit log."""


@audit_group.command("verify")
@json_option
def audit_verify(as_json: bool) -> None:
    """Check the whole chain; exit 1 and name the first bad record if it was tampered with."""
    from server.audit import service

    with _app() as svc, svc.sessions() as session:
        result = service.verify(session, svc.keys.audit_key)
    data = {
        "ok": result.ok,
        "problem": result.problem.value if result.problem else None,
        "first_bad_seq": result.first_bad_seq,
        "last_good_seq": result.last_good_seq,
        "detail": result.detail,
    }
    text = (
        "audit chain verified"
        if result.ok
        else f"audit chain broken at record {result.first_bad_seq}: "
        f"{result.problem.value if result.problem else ''} ({result.detail})"
    )
    _emit(as_json, data, text)
    if not result.ok:
        sys.exit(1)


@server_group.group("ledger")
def ledger_group() -> None:
    """The double-entry ledger."""


@ledger_group.command("check")
@json_option
def ledger_check(as_json: bool) -> None:
    """Prove the ledger's invariants from its transfers; exit 1 if any is broken."""
    from server.ledger import service

    with _app() as svc, svc.sessions() as session:
        report = service.check(session)
    data = {
        "ok": report.ok,
        "accounts": report.accounts,
        "transfers": report.transfers,
        "payments": report.payments,
        "problems": report.problems,
    }
    summary = (
        f"{report.accounts} accounts, {report.transfers} transfers, {report.payments} payments"
    )
    text = (
        f"ledger verified: {summary}"
        if report.ok
        else "\n".join([f"ledger broken ({summary}):", *report.problems])
    )
    _emit(as_json, data, text)
    if not report.ok:
        sys.exit(1)


@server_group.group("payments")
def payments_group() -> None:
    """Payments: operator refunds, a shopper's own limits and the expiry sweep."""


@payments_group.command("refund")
@click.argument("payment_id")
@click.option(
    "--amount", type=click.IntRange(min=1), help="Minor units (default: all that is left)."
)
@click.option("--operator", required=True, help="Who gives the refund (recorded in the audit log).")
@click.option("--reason", default="", help="Why, in a few words.")
@click.option(
    "--idempotency-key",
    default=None,
    help="Make retrying this command safe: the same key refunds once.",
)
@json_option
def payments_refund(
    payment_id: str,
    amount: int | None,
    operator: str,
    reason: str,
    idempotency_key: str | None,
    as_json: bool,
) -> None:
    """Refund all or part of a captured payment, as a new ledger transfer."""
    from server.db import transaction
    from server.errors import ProblemError, error_document
    from server.idempotency import service as idempotency
    from server.payments import service

    with _app() as svc:

        def work(session: Any) -> tuple[int, dict[str, Any]]:
            return service.refund(
                session,
                payment_id=payment_id,
                amount=amount,
                operator=operator,
                reason=reason,
                keys=svc.keys,
            )

        if idempotency_key is not None:
            params = {"payment_id": payment_id, "amount": amount, "reason": reason}
            outcome = idempotency.run(
                svc.sessions,
                scope=f"operator:{operator}",
                key=idempotency.check_key(idempotency_key),
                fingerprint=idempotency.fingerprint("CLI", "payments refund", params),
                lease_s=svc.settings.idempotency_lease_s,
                work=work,
            )
            status, body = outcome.status, outcome.body
        else:
            try:
                with transaction(svc.sessions) as session:
                    status, body = work(session)
            except ProblemError as error:
                status, body = error.status_code, error_document(error)
    if status >= 400:
        _emit(
            as_json, body, f"error [{body.get('code')}]: {body.get('detail') or body.get('title')}"
        )
        sys.exit(2)
    _emit(
        as_json,
        body,
        f"refunded; payment {body['payment_id']} has {body['refunded_amount']} of "
        f"{body['captured_amount']} {body['currency']} refunded",
    )


@payments_group.command("limits")
@click.argument("shopper_id")
@click.option("--per-payment", type=click.IntRange(min=1), help="The shopper's own, minor units.")
@click.option("--per-day", type=click.IntRange(min=1), help="Over the last 24 hours, minor units.")
@click.option("--clear", is_flag=True, help="Remove the shopper's own limits.")
@click.option("--operator", help="Who sets them (recorded in the audit log); needed to change.")
@json_option
def payments_limits(
    shopper_id: str,
    per_payment: int | None,
    per_day: int | None,
    clear: bool,
    operator: str | None,
    as_json: bool,
) -> None:
    """Show a shopper's payment limits, or set their own at their request (they apply where
    lower than the server's FACEPAY_LIMIT_PER_PAYMENT and FACEPAY_LIMIT_PER_DAY)."""
    from server.db import transaction
    from server.errors import ProblemError, error_document
    from server.payments import service

    changing = clear or per_payment is not None or per_day is not None
    if changing and not operator:
        raise click.UsageError("--operator is needed to change a shopper's limits")
    if clear and (per_payment is not None or per_day is not None):
        raise click.UsageError("--clear removes both limits; give it alone")
    with _app() as svc:
        try:
            with transaction(svc.sessions) as session:
                limits = service.limits_of(session, shopper_id, svc.settings)
                if changing:
                    assert operator is not None
                    limits = service.set_limits(
                        session,
                        shopper_id=shopper_id,
                        per_payment=None if clear else per_payment or limits.own_per_payment,
                        per_day=None if clear else per_day or limits.own_per_day,
                        operator=operator,
                        keys=svc.keys,
                        settings=svc.settings,
                    )
        except ProblemError as error:
            body = error_document(error)
            _emit(as_json, body, f"error [{body['code']}]: {body.get('detail') or body['title']}")
            sys.exit(2)
    body = {"shopper_id": shopper_id, **limits.as_dict()}
    _emit(
        as_json,
        body,
        f"shopper {shopper_id}: at most {limits.per_payment} a payment and {limits.per_day} a "
        f"day (own limits: {limits.own_per_payment or 'none'} a payment, "
        f"{limits.own_per_day or 'none'} a day)",
    )


@payments_group.command("expire")
@json_option
def payments_expire(as_json: bool) -> None:
    """Expire stale authorizations (holds released) and step-up challenges (probes erased),
    and forget idempotency keys past their time. Run it from cron or a systemd timer."""
    from server.db import transaction
    from server.idempotency import service as idempotency
    from server.payments import service

    with _app() as svc, transaction(svc.sessions) as session:
        counts = service.sweep(session, svc.keys)
        counts["idempotency_keys"] = idempotency.prune(
            session, keep_hours=svc.settings.idempotency_ttl_h
        )
    _emit(
        as_json,
        counts,
        f"expired {counts['authorizations']} authorizations and {counts['challenges']} "
        f"challenges; forgot {counts['idempotency_keys']} idempotency keys",
    )


@server_group.command("purge")
@click.option("--dry-run", is_flag=True, help="Only list the shoppers the purge would delete.")
@click.option(
    "--finish-deletions",
    is_flag=True,
    help="Also delete shoppers whose data key is gone (a database restored from an older "
    "backup). Check first that FACEPAY_KEY_STORE is the right key store.",
)
@json_option
def purge(dry_run: bool, finish_deletions: bool, as_json: bool) -> None:
    """Delete shoppers inactive for FACEPAY_RETENTION_DAYS and pending data past its limits,
    with an audit record. Run it daily (deploy/server/facepay-purge.timer) or by hand."""
    from server.privacy.retention import PurgeRefused
    from server.privacy.retention import purge as run_purge

    with _app() as svc:
        try:
            report = run_purge(
                svc.sessions,
                svc.keys,
                svc.settings,
                dry_run=dry_run,
                finish_deletions=finish_deletions,
            )
        except PurgeRefused as refused:
            raise click.ClickException(str(refused)) from None
    data = report.as_dict()
    if dry_run:
        data["shoppers"] = report.inactive_shoppers
        text = (
            f"would delete {len(report.inactive_shoppers)} shoppers inactive since {report.cutoff}"
        )
    else:
        cleared = ", ".join(f"{name} {count}" for name, count in sorted(report.counts.items()))
        text = (
            f"deleted {len(report.inactive_shoppers)} shoppers inactive since {report.cutoff}; "
            f"cleared {cleared}"
        )
    _emit(as_json, data, text)


@server_group.group("keys")
def keys_group() -> None:
    """The instance's own keys (master, audit, phone, sealing) and the shopper key store."""


@keys_group.command("generate")
@json_option
def keys_generate(as_json: bool) -> None:
    """Create whichever keys do not exist yet, where the FACEPAY_*_KEY_FILE and
    FACEPAY_KEY_STORE settings say (0600 files); never overwrites a key."""
    from server.config import load_settings
    from server.keys import generate_missing, key_paths

    paths = key_paths(load_settings())
    created = generate_missing(paths)
    data = {"created": created, "paths": {name: str(path) for name, path in paths.items()}}
    kept = [name for name in paths if name not in created]
    _emit(
        as_json,
        data,
        "\n".join(
            [f"created {name}: {paths[name]}" for name in created]
            + [f"kept {name}: {paths[name]} (exists)" for name in kept]
        ),
    )


@server_group.command("openapi")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path))
def openapi(output: Path | None) -> None:
    """Print (or write) the OpenAPI document generated from the code."""
    from server.openapi import render

    text = render()
    if output is None:
        click.echo(text, nl=False)
    else:
        output.write_text(text, encoding="utf-8")


from server.operators.cli import operator_group  # noqa: E402 (its commands import back lazily)

server_group.add_command(operator_group)

from server.matching.cli import risk_command  # noqa: E402

server_group.add_command(risk_command)
