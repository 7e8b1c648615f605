"""`facepay server risk`: the pack's gallery simulator through the server's decision code."""

from __future__ import annotations

import json

import click

from models.packs import DEFAULT_PACK


@click.command("risk")
@click.option("--pack", "pack_id", default=DEFAULT_PACK, show_default=True, help="Model pack id.")
@click.option(
    "--gallery",
    "sizes",
    type=click.IntRange(0, 10_000_000),
    multiple=True,
    required=True,
    help="Simulated shoppers (repeat for several sizes).",
)
@click.option("--seed", type=int, default=7, show_default=True)
@click.option(
    "--trials",
    "scale",
    type=click.FloatRange(0.001, 100.0),
    default=1.0,
    show_default=True,
    help="Scale of the trial counts (1: 20,000 honest payments, 100,000 strangers, "
    "20,000 victims, 2,000 enrollments).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def risk_command(
    pack_id: str, sizes: tuple[int, ...], seed: int, scale: float, as_json: bool
) -> None:
    """Identification risk at these gallery sizes: measured by the gallery simulator through
    the server's own decision code, beside the rates the risk rule computes. The targets and
    assumptions are the server's settings (FACEPAY_RISK_*)."""
    from models.manifest import bundled_manifests
    from server.config import load_settings
    from server.matching.service import risk_targets
    from server.matching.simulation import Trials, risk_report

    manifest = bundled_manifests().get(pack_id)
    if manifest is None or manifest.calibration is None:
        raise click.UsageError(f"pack {pack_id!r} is unknown or not calibrated")
    settings = load_settings()
    trials = Trials(
        honest=max(1, int(Trials.honest * scale)),
        stranger=max(1, int(Trials.stranger * scale)),
        targeted=max(1, int(Trials.targeted * scale)),
        duplicate=max(1, int(Trials.duplicate * scale)),
    )
    try:
        report = risk_report(
            manifest.calibration,
            risk_targets(settings),
            list(sizes),
            base_threshold=manifest.calibration.threshold(settings.match_fmr),
            trials=trials,
            seed=seed,
            progress=None if as_json else click.echo,
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    report["pack"] = manifest.ref
    if as_json:
        click.echo(json.dumps(report, sort_keys=True))
        return
    for gallery in report["galleries"]:
        click.echo(_summary(gallery))


def _summary(gallery: dict[str, object]) -> str:
    lines = [
        f"{gallery['gallery']} shoppers: asks {gallery['rung']} (threshold {gallery['threshold']})"
    ]
    for name in (
        "honest_completion",
        "honest_wrong_wallet_per_payment",
        "stranger_success_per_attempt",
        "targeted_success_per_day",
        "false_duplicate_per_enrollment",
    ):
        figure = gallery[name]
        assert isinstance(figure, dict)
        bound = f" (< {figure['upper_95']:.1g})" if figure.get("upper_95") else ""
        lines.append(
            f"  {name:34} measured {figure['measured']:.3g} of {figure['trials']}{bound}, "
            f"computed {figure['computed']:.3g}"
        )
    return "\n".join(lines)
