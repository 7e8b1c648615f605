"""`facepay models …`: list, build, verify, pull, embed, compare, evaluate, calibrate."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from models import packs
from models.errors import FaceEngineError
from models.manifest import PackManifest

logger = logging.getLogger(__name__)

pack_option = click.option(
    "--pack", "pack_id", default=packs.DEFAULT_PACK, show_default=True, help="Model pack id."
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


@click.group("models")
def models_group() -> None:
    """Face model packs: build, verify and use them."""


def _emit(data: Any) -> None:
    click.echo(json.dumps(data, sort_keys=True))


@contextmanager
def _progress_bar(label: str) -> Iterator[Callable[[int, int], None]]:
    from tqdm import tqdm

    bar: Any = None

    def update(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc=label, unit="step", file=sys.stderr, leave=False)
        bar.update(done - bar.n)

    try:
        yield update
    finally:
        if bar is not None:
            bar.close()


def _manifest(pack_id: str) -> PackManifest:
    manifest = packs.get_manifest(pack_id)
    if not manifest.licence.commercial_use:
        click.secho(
            f"warning: pack {manifest.id} is for non-commercial research only: "
            f"{manifest.licence.summary}",
            fg="yellow",
            err=True,
        )
    return manifest


def _open(pack_id: str, flip: bool | None = None, *, every_face: bool = False) -> Any:
    from models.detect import THOROUGH_HOG_PASSES

    _manifest(pack_id)
    with _progress_bar(f"building {pack_id}") as progress:
        return packs.open_engine(
            pack_id,
            progress=progress,
            flip_average=flip,
            hog_passes=THOROUGH_HOG_PASSES if every_face else None,
        )


@models_group.command("list")
@json_option
def list_packs(as_json: bool) -> None:
    """Every known pack, its licence and whether it is ready here."""
    rows = []
    for manifest in packs.manifests().values():
        checks = packs.verify(manifest)
        ready = all(check.status == "ok" for check in checks)
        calibration = manifest.calibration
        rows.append(
            {
                "pack": manifest.ref,
                "title": manifest.title,
                "licence": manifest.licence.spdx,
                "commercial_use": manifest.licence.commercial_use,
                "embedding_size": manifest.embedding_size,
                "ready": ready,
                "default_threshold": calibration.default_threshold if calibration else None,
            }
        )
    if as_json:
        _emit(rows)
        return
    for row in rows:
        use = "commercial use OK" if row["commercial_use"] else "NON-COMMERCIAL ONLY"
        state = "ready" if row["ready"] else "not built/pulled"
        click.echo(f"{row['pack']:<20} {row['licence']:<40} {use:<20} {state}")


@models_group.command("build")
@click.argument("pack_id")
@click.option("--force", is_flag=True, help="Rebuild even when a verified build exists.")
def build(pack_id: str, force: bool) -> None:
    """Build a pack locally (the default pack: dlib's CC0 ResNet into ONNX)."""
    manifest = _manifest(pack_id)
    with _progress_bar(f"building {pack_id}") as progress:
        path = packs.build(manifest, progress, force=force)
    click.echo(f"{manifest.ref} built and verified: {path}")


@models_group.command("verify")
@click.argument("pack_id")
@json_option
def verify(pack_id: str, as_json: bool) -> None:
    """Check every file of a pack against its sha256; exit 1 when one is missing or differs."""
    manifest = packs.get_manifest(pack_id)
    checks = packs.verify(manifest)
    if as_json:
        _emit([dataclasses.asdict(check) for check in checks])
    else:
        for check in checks:
            click.echo(f"{check.status:<9} {check.role:<12} {check.name}  {check.path}")
    if any(check.status != "ok" for check in checks):
        sys.exit(1)


@models_group.command("pull")
@click.argument("pack_id")
def pull(pack_id: str) -> None:
    """Download a pack (insightface packs through insightface's own downloader) and pin it."""
    manifest = _manifest(pack_id)
    with _progress_bar(f"fetching {pack_id}") as progress:
        path = packs.pull(manifest, progress)
    click.echo(f"{manifest.ref} ready: {path}")


@models_group.command("embed")
@pack_option
@json_option
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
def embed(pack_id: str, as_json: bool, images: tuple[Path, ...]) -> None:
    """Faces and embeddings of each image, one line per image in the order given."""
    from models.images import load_image

    engine = _open(pack_id, every_face=True)
    failed = False
    for path in images:
        record: dict[str, Any] = {"image": str(path), "pack": engine.pack}
        try:
            image = load_image(path)
            faces = engine.analyse(image)
            embeddings = engine.embed_faces(image, faces)
            record["faces"] = [
                {**face.as_dict(), "embedding": [round(float(v), 7) for v in emb.vector]}
                for face, emb in zip(faces, embeddings, strict=True)
            ]
            record["face_count"] = len(faces)
        except FaceEngineError as exc:
            failed = True
            record["error"] = {"code": exc.code, "message": str(exc)}
        if as_json:
            _emit(record)
        elif "error" in record:
            click.echo(f"{path}: error {record['error']['code']}: {record['error']['message']}")
        else:
            summary = "no face" if not record["faces"] else f"{len(record['faces'])} face(s)"
            click.echo(f"{path}: {summary}")
            for face in record["faces"]:
                q = face["quality"]
                click.echo(
                    f"  box {face['box']} score {face['det_score']:.2f} size {q['face_px']}px "
                    f"sharpness {q['sharpness']} brightness {q['brightness']} "
                    f"yaw {q['yaw']} pitch {q['pitch']}"
                )
    if failed:
        sys.exit(1)


@models_group.command("compare")
@pack_option
@json_option
@click.argument("first", type=click.Path(path_type=Path))
@click.argument("second", type=click.Path(path_type=Path))
def compare(pack_id: str, as_json: bool, first: Path, second: Path) -> None:
    """Similarity of the largest faces of two images, and the decision at the pack's threshold."""
    from models.images import load_image

    engine = _open(pack_id)
    embeddings = []
    for path in (first, second):
        image = load_image(path)
        faces = engine.analyse(image)
        if not faces:
            raise FaceEngineError(f"{path}: no face found", code="no_face")
        embeddings.append(engine.embed(image, faces[0]))
    similarity = embeddings[0].similarity(embeddings[1])
    calibration = engine.manifest.calibration
    if calibration is None:
        raise FaceEngineError(
            f"pack {pack_id} has no operating point; run `facepay models calibrate`",
            code="not_calibrated",
        )
    threshold = calibration.default_threshold
    same = similarity >= threshold
    result = {
        "pack": engine.pack,
        "similarity": round(similarity, 6),
        "threshold": threshold,
        "operating_point": f"{calibration.default_rule} on {calibration.dataset}",
        "same_person": same,
    }
    if as_json:
        _emit(result)
    else:
        verdict = "same person" if same else "different people"
        click.echo(
            f"similarity {similarity:.4f}: {verdict} "
            f"(threshold {threshold:.4f}: {calibration.default_rule} on {calibration.dataset})"
        )


def _labelled_pairs(pairs: Path | None, identities: Path | None) -> list[tuple[str, str, bool]]:
    from models import evaluate

    if (pairs is None) == (identities is None):
        raise click.UsageError("give exactly one of --pairs or --identities")
    if pairs is not None:
        return evaluate.read_pairs(pairs)
    assert identities is not None
    return evaluate.pairs_from_identities(evaluate.read_identities(identities))


labels_options = [
    click.option(
        "--images", "images_dir", required=True, type=click.Path(file_okay=False, path_type=Path)
    ),
    click.option(
        "--pairs",
        type=click.Path(dir_okay=False, path_type=Path),
        help="file_x,file_y,Decision CSV",
    ),
    click.option(
        "--identities", type=click.Path(dir_okay=False, path_type=Path), help="file,identity CSV"
    ),
    click.option(
        "--flip/--no-flip",
        "flip",
        default=None,
        help="Override the pack's mirrored-chip averaging.",
    ),
]


def _with_labels(function: Callable[..., None]) -> Callable[..., None]:
    for option in reversed(labels_options):
        function = option(function)
    return function


@models_group.command("evaluate")
@pack_option
@_with_labels
@json_option
def evaluate_command(
    pack_id: str,
    images_dir: Path,
    pairs: Path | None,
    identities: Path | None,
    flip: bool | None,
    as_json: bool,
) -> None:
    """Verification accuracy on a labelled set: ROC AUC, EER, FNMR at FMR 1e-2 and 1e-3."""
    from models import evaluate

    labelled = _labelled_pairs(pairs, identities)
    report = evaluate.evaluate(_open(pack_id, flip), images_dir, labelled)
    if as_json:
        _emit(report.as_dict())
        return
    click.echo(f"pack                   {report.pack}")
    click.echo(
        f"photos                 {report.photos} ({len(report.detection_failures)} without a face)"
    )
    for name, reason in sorted(report.detection_failures.items()):
        click.echo(f"  failed               {name}: {reason}")
    click.echo(
        f"pairs                  {report.genuine_pairs} genuine, {report.impostor_pairs} impostor"
    )
    click.echo(f"ROC AUC                {report.roc_auc:.5f}")
    click.echo(f"EER                    {report.eer:.4f}")
    for fmr, fnmr in report.fnmr_at_fmr.items():
        click.echo(f"FNMR at FMR {fmr:<10} {fnmr:.4f}")
    click.echo(f"largest impostor       {report.largest_impostor:.4f}")
    click.echo(f"smallest genuine       {report.smallest_genuine:.4f}")
    if report.at_default is not None:
        d = report.at_default
        click.echo(
            f"at default threshold   {report.default_threshold}: "
            f"{d['impostors_accepted']} impostors "
            f"accepted, {d['genuine_rejected']} genuine rejected (FNMR {d['fnmr']:.4f})"
        )


def _fit_simulator(scores: Any, dimension: int) -> dict[str, Any]:
    """The calibration's `simulator` and `curves` entries, fitted to the labelled scores."""
    from models import simulate

    targets = simulate.FitTargets.of(scores.impostor, scores.genuine)
    model = simulate.fit(targets, dimension)
    curves = simulate.draw_curves(simulate.GallerySimulator(model, seed=3))
    return {"simulator": model.as_dict(), "curves": curves.as_dict()}


@models_group.command("calibrate")
@pack_option
@_with_labels
@click.option(
    "--dataset", required=True, help="Name of the labelled set, recorded with the thresholds."
)
@click.option(
    "--write-manifest",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the operating points into this manifest JSON file.",
)
@click.option(
    "--simulator/--no-simulator",
    default=True,
    show_default=True,
    help="Also fit the gallery simulator to the scores and draw the risk rule's score curves "
    "(a few minutes).",
)
@json_option
def calibrate_command(
    pack_id: str,
    images_dir: Path,
    pairs: Path | None,
    identities: Path | None,
    flip: bool | None,
    dataset: str,
    write_manifest: Path | None,
    simulator: bool,
    as_json: bool,
) -> None:
    """Operating points (thresholds at FMR 1e-3, 1e-4, 1e-5) from a labelled set, and the
    gallery simulator fitted to it with the score curves the server's risk rule reads."""
    from models import evaluate

    labelled = _labelled_pairs(pairs, identities)
    engine = _open(pack_id, flip)
    files = {name for a, b, _ in labelled for name in (a, b)}
    scores = evaluate.score_pairs(evaluate.embed_files(engine, images_dir, files), labelled)
    calibration = evaluate.calibrate(scores, dataset=dataset, date=dt.date.today().isoformat())
    data = dataclasses.asdict(calibration)
    if simulator:
        data.update(_fit_simulator(scores, engine.manifest.embedding_size))
    if write_manifest is not None:
        document = json.loads(write_manifest.read_text(encoding="utf-8"))
        if document.get("id") != pack_id:
            raise click.UsageError(f"{write_manifest} is not the manifest of {pack_id}")
        document["calibration"] = data
        write_manifest.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    if as_json:
        _emit(data)
        return
    click.echo(
        f"{pack_id} on {dataset}: {calibration.genuine_pairs} genuine, "
        f"{calibration.impostor_pairs} impostor pairs"
    )
    for point in calibration.points:
        click.echo(f"  FMR {point.fmr:<8g} threshold {point.threshold:.6f} ({point.method})")
    click.echo(
        f"  default     threshold {calibration.default_threshold:.6f} ({calibration.default_rule})"
    )
