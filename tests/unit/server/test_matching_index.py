"""GalleryIndex: exact and quantised-shortlist paths against a brute-force reference.

Most tests here are about the index's mechanics (exact scores, removals, concurrency), on
random unit vectors. Whether the shortlist finds the right shopper depends on how close
faces are to each other: that is checked on the pack's gallery simulator, whose faces collide
as real ones do (`test_top1_on_simulated_faces_equals_brute_force`)."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from server.matching import index as index_module
from server.matching.index import GalleryIndex, RowBuffer

Array = npt.NDArray[np.float32]
D = 128


def _units(rng: np.random.Generator, count: int, dimension: int = D) -> Array:
    rows = rng.standard_normal((count, dimension), dtype=np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    return rows


def _genuine(
    rng: np.random.Generator, sources: Array, low: float = 0.6, high: float = 0.9
) -> Array:
    """Noisy copies of `sources` at a cosine drawn from [low, high] (a second photo)."""
    cosine = rng.uniform(low, high, (sources.shape[0], 1)).astype(np.float32)
    noise = _units(rng, sources.shape[0], sources.shape[1])
    noise -= (noise * sources).sum(axis=1, keepdims=True) * sources
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    probes = cosine * sources + np.sqrt(1 - cosine**2) * noise
    unit: Array = (probes / np.linalg.norm(probes, axis=1, keepdims=True)).astype(np.float32)
    return unit


def _brute_force(
    vectors: Array, owners: npt.NDArray[np.int64], probe: Array, k: int
) -> list[tuple[str, float]]:
    """Reference: every template scored, best per shopper, k best shoppers."""
    scores = vectors @ probe
    best = np.full(int(owners.max()) + 1, -np.inf, np.float32)
    np.maximum.at(best, owners, scores)
    order = np.argsort(-best, kind="stable")[:k]
    return [(f"s{i}", float(best[i])) for i in order.tolist() if best[i] > -np.inf]


def _gallery(
    rng: np.random.Generator, templates: int, per_shopper: int = 3
) -> tuple[GalleryIndex, Array, npt.NDArray[np.int64]]:
    vectors = _units(rng, templates)
    owners = np.arange(templates, dtype=np.int64) // per_shopper
    index = GalleryIndex(D)
    index.bulk_load([f"s{i}" for i in range(int(owners[-1]) + 1)], vectors, owners)
    return index, vectors, owners


@pytest.fixture
def small_cutoffs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The quantised path from 2,000 templates and a short tail, so tests stay fast."""
    monkeypatch.setattr(index_module, "EXACT_MAX_TEMPLATES", 2_000)
    monkeypatch.setattr(index_module, "TAIL_MAX", 64)
    monkeypatch.setattr(index_module, "TRAIN_SAMPLE", 2_000)


@pytest.mark.parametrize("templates", [3_000, 30_000, 90_000])
def test_top1_equals_brute_force_for_genuine_probes(templates: int) -> None:
    rng = np.random.default_rng(templates)
    index, vectors, owners = _gallery(rng, templates)
    assert index.approximate == (templates >= index_module.EXACT_MAX_TEMPLATES)
    picks = rng.choice(templates, 300, replace=False)
    second_agrees = 0
    for probe, source in zip(_genuine(rng, vectors[picks]), picks.tolist(), strict=True):
        found = index.search(probe, k=2)
        expected = _brute_force(vectors, owners, probe, 2)
        assert found[0].shopper_id == expected[0][0] == f"s{owners[source]}"
        assert found[0].score == pytest.approx(expected[0][1], abs=1e-6)
        assert len(found) == 2 and found[0].shopper_id != found[1].shopper_id
        assert found[0].score >= found[1].score
        second_agrees += found[1].shopper_id == expected[1][0]
    # The runner-up is an impostor; the shortlist finds the exact one nearly always.
    assert second_agrees >= 295


@pytest.mark.parametrize("shoppers", [30_000, 100_000])
def test_top1_on_simulated_faces_equals_brute_force(shoppers: int) -> None:
    """One fused row per shopper, as the server keeps them; a new visit's capture as the
    probe. Impostor scores are 0.83 +/- 0.034 here, not 0 +/- 0.09 as for random vectors."""
    from models.manifest import bundled_manifests
    from models.simulate import GallerySimulator, SimulatorModel

    calibration = bundled_manifests()["dlib-resnet-v1"].calibration
    assert calibration is not None and calibration.simulator is not None
    simulator = GallerySimulator(SimulatorModel.from_mapping(calibration.simulator), seed=4)
    rng = np.random.default_rng(shoppers)
    centres = simulator.identities(shoppers, rng)
    rows = simulator.fuse(simulator.captures(centres, rng, frames=3))
    owners = np.arange(shoppers, dtype=np.int64)
    index = GalleryIndex(D)
    index.bulk_load([f"s{i}" for i in range(shoppers)], rows, owners)
    assert index.approximate
    picks = rng.choice(shoppers, 300, replace=False)
    # The exact best may be a look-alike rather than the probe's own shopper: the rung's
    # threshold and margin decide what that means; the index must find what brute force finds.
    for probe in simulator.probes(centres[picks], rng):
        found = index.search(probe, k=2)
        expected = _brute_force(rows, owners, probe, 2)
        assert found[0].shopper_id == expected[0][0]
        assert found[0].score == pytest.approx(expected[0][1], abs=1e-6)


def test_impostor_probes_return_exact_scores_on_the_quantised_path(small_cutoffs: None) -> None:
    rng = np.random.default_rng(1)
    index, vectors, owners = _gallery(rng, 6_000)
    assert index.approximate
    for probe in _units(rng, 50):
        found = index.search(probe, k=3)
        assert len({c.shopper_id for c in found}) == 3
        for candidate in found:
            shopper = int(candidate.shopper_id[1:])
            exact = float(np.max(vectors[owners == shopper] @ probe))
            assert candidate.score == pytest.approx(exact, abs=1e-6)
        # Below `exhaustive_below` the search is redone over every template: exact top-k.
        confirmed = index.search(probe, k=3, exhaustive_below=2.0)
        expected = _brute_force(vectors, owners, probe, 3)
        assert [c.shopper_id for c in confirmed] == [s for s, _ in expected]
        assert [c.score for c in confirmed] == pytest.approx([v for _, v in expected], abs=1e-6)
    # More shoppers asked for than there are: all of them, in order.
    everyone = index.search(probe, k=5_000, exhaustive_below=2.0)
    assert [c.shopper_id for c in everyone] == [
        s for s, _ in _brute_force(vectors, owners, probe, 5_000)
    ]


@pytest.mark.parametrize("templates", [300, 6_000])
def test_best_score_per_shopper_counts_a_shopper_once(small_cutoffs: None, templates: int) -> None:
    rng = np.random.default_rng(2)
    index, _, _ = _gallery(rng, templates)
    base = _units(rng, 1)[0]
    alice = _genuine(rng, np.stack([base] * 4), 0.95, 0.97)
    index.add("alice", alice)
    index.add("bob", _genuine(rng, base[None], 0.8, 0.8))
    assert index.approximate == (templates >= 2_000)
    found = index.search(base, k=2)
    assert [c.shopper_id for c in found] == ["alice", "bob"]
    assert found[0].score == pytest.approx(float(np.max(alice @ base)), abs=1e-6)
    assert [c.shopper_id for c in index.search(base, k=1)] == ["alice"]


@pytest.mark.parametrize("templates", [300, 6_000])
def test_restrict_to_searches_only_those_shoppers_exactly(
    small_cutoffs: None, templates: int
) -> None:
    rng = np.random.default_rng(3)
    index, vectors, owners = _gallery(rng, templates)
    probe = _genuine(rng, vectors[:1])[0]  # s0's
    allowed = {"s5", "s9", "s17", "nobody"}
    found = index.search(probe, k=2, restrict_to=allowed)
    expected = []
    for shopper in ("s5", "s9", "s17"):
        expected.append((shopper, float(np.max(vectors[owners == int(shopper[1:])] @ probe))))
    expected.sort(key=lambda pair: -pair[1])
    assert [c.shopper_id for c in found] == [s for s, _ in expected[:2]]
    assert [c.score for c in found] == pytest.approx([v for _, v in expected[:2]], abs=1e-6)
    assert index.search(probe, restrict_to=["s0", "s5"])[0].shopper_id == "s0"
    assert index.search(probe, restrict_to={"nobody"}) == []
    assert index.search(probe, restrict_to=[]) == []
    index.remove("s5")
    assert [c.shopper_id for c in index.search(probe, k=5, restrict_to=allowed)] == [
        s for s, _ in expected if s != "s5"
    ]


@pytest.mark.parametrize("templates", [300, 6_000])
def test_removals_and_additions_take_effect_at_once(small_cutoffs: None, templates: int) -> None:
    rng = np.random.default_rng(4)
    index, vectors, _ = _gallery(rng, templates)
    shoppers = templates // 3
    probe = _genuine(rng, vectors[:1])[0]
    assert index.search(probe)[0].shopper_id == "s0"
    assert index.remove("s0")
    assert "s0" not in index and len(index) == shoppers - 1
    assert index.template_count == templates - 3
    assert all(c.shopper_id != "s0" for c in index.search(probe, k=5))
    assert all(c.shopper_id != "s0" for c in index.search(probe, k=5, exhaustive_below=2.0))
    assert not index.remove("s0")
    index.add("newcomer", vectors[:2])
    assert "newcomer" in index and len(index) == shoppers
    assert index.search(probe)[0].shopper_id == "newcomer"
    # Adding a present shopper replaces their templates.
    index.add("newcomer", _units(rng, 3))
    assert index.template_count == templates - 3 + 3 and len(index) == shoppers
    assert all(c.shopper_id != "newcomer" for c in index.search(probe, k=1))
    index.add("s0", vectors[:3])
    assert index.search(probe)[0].shopper_id == "s0"


def test_tail_merges_retraining_and_compaction_keep_results_exact(small_cutoffs: None) -> None:
    rng = np.random.default_rng(5)
    index, vectors, owners = _gallery(rng, 2_400)
    first = index._snapshot.quantised
    assert first is not None
    extra = _units(rng, 3 * 900)
    for shopper in range(900):  # past several tail merges, then doubles: retrained
        index.add(f"s{800 + shopper}", extra[3 * shopper : 3 * shopper + 3])
    quantised = index._snapshot.quantised
    assert quantised is not None and quantised is not first
    assert quantised.trained_on > first.trained_on
    all_vectors = np.concatenate([vectors, extra])
    all_owners = np.concatenate([owners, 800 + np.arange(2_700) // 3])
    picks = rng.choice(all_vectors.shape[0], 150, replace=False)
    for probe, source in zip(_genuine(rng, all_vectors[picks]), picks.tolist(), strict=True):
        assert index.search(probe)[0].shopper_id == f"s{all_owners[source]}"
    for shopper in range(0, 1_700, 2):  # half the rows dead: compacted
        assert index.remove(f"s{shopper}")
    assert index.template_count == 850 * 3 and index._snapshot.count < 5_100  # compacted
    assert index.approximate  # 2,550 live templates, above the (patched) cutoff
    for probe, source in zip(_genuine(rng, all_vectors[picks]), picks.tolist(), strict=True):
        shopper = int(all_owners[source])
        found = index.search(probe, k=2)
        if shopper % 2:
            assert found[0].shopper_id == f"s{shopper}"
        assert all(int(c.shopper_id[1:]) % 2 == 1 for c in found)
    assert "s1" in index and "s0" not in index and len(index) == 850
    for shopper in range(1, 1_700, 2):  # below half the cutoff: exhaustive again
        if shopper % 6 != 1:
            index.remove(f"s{shopper}")
    assert not index.approximate and len(index) == 284
    assert index.search(all_vectors[3 * 7], k=1)[0].shopper_id == "s7"


@pytest.mark.parametrize("templates", [300, 6_000])
def test_bulk_load_equals_adding(small_cutoffs: None, templates: int) -> None:
    rng = np.random.default_rng(6)
    loaded, vectors, owners = _gallery(rng, templates)
    added = GalleryIndex(D)
    for shopper in range(templates // 3):
        added.add(f"s{shopper}", vectors[owners == shopper])
    shuffled = GalleryIndex(D)
    order = rng.permutation(templates)
    shuffled.bulk_load([f"s{i}" for i in range(templates // 3)], vectors[order], owners[order])
    assert loaded.approximate == added.approximate == shuffled.approximate
    probes = np.concatenate([_genuine(rng, vectors[rng.choice(templates, 20)]), _units(rng, 5)])
    for probe in probes:
        assert loaded.search(probe) == added.search(probe) == shuffled.search(probe)
    for index in (loaded, added, shuffled):
        assert len(index) == templates // 3 and index.template_count == templates


def test_bulk_load_replaces_contents_and_skips_shoppers_without_rows() -> None:
    rng = np.random.default_rng(7)
    index = GalleryIndex(D)
    index.add("old", _units(rng, 3))
    vectors = _units(rng, 4)
    index.bulk_load(["a", "empty", "b"], vectors, np.array([0, 0, 2, 2]))
    assert "old" not in index and "empty" not in index and len(index) == 2
    found = index.search(vectors[2], k=5)
    assert [c.shopper_id for c in found] == ["b", "a"]
    assert found[0].score == pytest.approx(1.0, abs=1e-6)
    index.bulk_load([], np.zeros((0, D), np.float32), np.zeros(0, np.int64))
    assert len(index) == 0 and index.search(vectors[0]) == []


def test_empty_index_and_k() -> None:
    index = GalleryIndex(D)
    probe = _units(np.random.default_rng(8), 1)[0]
    assert index.search(probe) == [] and len(index) == 0 and index.template_count == 0
    index.add("only", probe[None])
    assert [c.shopper_id for c in index.search(probe, k=3)] == ["only"]
    assert index.search(probe.astype(np.float64)[None, :])[0].shopper_id == "only"


@pytest.mark.parametrize(
    "bad",
    [
        np.full((1, D), np.nan, np.float32),
        np.full((1, D), np.inf, np.float32),
        np.ones((1, 64), np.float32),
        np.ones((2, 3, D), np.float32),
        np.ones((1, D), np.int32),
        np.zeros((0, D), np.float32),
        np.ones((9, D), np.float32),
    ],
)
def test_bad_templates_are_refused_without_quoting_them(bad: np.ndarray) -> None:
    index = GalleryIndex(D)
    with pytest.raises(ValueError) as refused:
        index.add("x", bad)
    assert "nan" not in str(refused.value).lower() and "1." not in str(refused.value)
    assert "x" not in index


@pytest.mark.parametrize(
    "bad",
    [
        np.full(D, np.nan, np.float32),
        np.ones(64, np.float32),
        np.ones((2, D), np.float32),
        np.ones(D, np.int64),
        np.array(["a"] * D),
    ],
)
def test_bad_probes_are_refused(bad: np.ndarray) -> None:
    index = GalleryIndex(D)
    index.add("x", np.eye(D, dtype=np.float32)[:1])
    with pytest.raises(ValueError) as refused:
        index.search(bad)
    assert "nan" not in str(refused.value).lower()


def test_bad_arguments_are_refused() -> None:
    index = GalleryIndex(D)
    vectors = np.eye(D, dtype=np.float32)[:4]
    probe = vectors[0]
    for k in (0, -1, True):
        with pytest.raises(ValueError):
            index.search(probe, k=k)
    with pytest.raises(ValueError):
        index.search(probe, restrict_to="s0")
    for owners in (np.array([0, 1, 2]), np.array([0, 1, 2, 3]), np.array([0.0, 0, 1, 1])):
        with pytest.raises(ValueError):
            index.bulk_load(["a", "b", "c"], vectors, owners)
    with pytest.raises(ValueError):
        index.bulk_load(["a", "a"], vectors, np.array([0, 0, 1, 1]))
    with pytest.raises(ValueError):
        index.bulk_load(["a"], np.full((1, D), np.nan, np.float32), np.array([0]))
    with pytest.raises(ValueError):
        GalleryIndex(0)
    assert len(index) == 0


def test_concurrent_searches_while_writing(small_cutoffs: None) -> None:
    """Readers never fail or see a half-written shopper while merges and rebuilds happen."""
    rng = np.random.default_rng(9)
    index, vectors, _ = _gallery(rng, 2_100)  # just past the patched cutoff
    stable = _genuine(rng, vectors[:30])  # s0..s9 are never touched
    errors: list[BaseException] = []
    stop = threading.Event()

    def searching(seed: int) -> None:
        local = np.random.default_rng(seed)
        try:
            while not stop.is_set():
                row = int(local.integers(30))
                found = index.search(stable[row], k=2)
                assert found[0].shopper_id == f"s{row // 3}"
                assert len(found) == 2 and found[0].shopper_id != found[1].shopper_id
                only = index.search(stable[row], k=2, restrict_to={f"s{row // 3}", "late1"})
                assert only[0].shopper_id == f"s{row // 3}"
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=searching, args=(seed,)) for seed in range(3)]
    for thread in threads:
        thread.start()
    try:
        late = _units(rng, 3 * 1_500)
        for number in range(1_500):  # tail merges, then a retraining at twice the size
            index.add(f"late{number}", late[3 * number : 3 * number + 3])
            if number % 3 == 0:
                index.remove(f"late{number // 2}")
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert errors == []
    assert len(index) == 700 + 1_500 - 500


def test_a_row_buffer_becomes_the_storage(small_cutoffs: None) -> None:
    """Blocks appended to a RowBuffer (past its expected size too) are loaded without a copy,
    with the same results as an ordinary bulk load; unsorted owners are sorted into a copy."""
    rng = np.random.default_rng(10)
    vectors = _units(rng, 3_000)
    owners = np.arange(3_000, dtype=np.int64) // 3
    ids = [f"s{i}" for i in range(1_000)]
    rows = RowBuffer(D, expected_rows=1_000)
    rows.append(vectors[:700].astype("<f4").tobytes())
    rows.append(vectors[700:2_900])  # beyond the expected rows: the buffer grows
    rows.append(bytearray(vectors[2_900:].astype("<f4").tobytes()))
    assert len(rows) == 3_000
    storage = rows._storage
    adopted, plain = GalleryIndex(D), GalleryIndex(D)
    adopted.bulk_load(ids, rows, owners)
    plain.bulk_load(ids, vectors, owners)
    assert adopted._snapshot.vectors is storage and len(rows) == 0
    probes = np.concatenate([_genuine(rng, vectors[rng.choice(3_000, 20)]), _units(rng, 5)])
    for probe in probes:
        assert adopted.search(probe) == plain.search(probe)
    adopted.add("late", _units(rng, 3))  # the spare rows take enrollments
    assert adopted._snapshot.vectors is storage and "late" in adopted

    order = rng.permutation(3_000)
    shuffled = RowBuffer(D, expected_rows=3_000)
    shuffled.append(vectors[order])
    index = GalleryIndex(D)
    index.bulk_load(ids, shuffled, owners[order])
    for probe in probes:
        assert index.search(probe) == plain.search(probe)


def test_a_row_buffer_refuses_bad_rows() -> None:
    rows = RowBuffer(D)
    with pytest.raises(ValueError):
        rows.append(b"\0" * (4 * D + 4))  # not whole rows
    with pytest.raises(ValueError):
        rows.append(np.zeros((2, D + 1), np.float32))
    with pytest.raises(ValueError):
        rows.append(np.zeros((2, D), np.int32))
    with pytest.raises(ValueError):
        GalleryIndex(D + 2).bulk_load(["a"], RowBuffer(D), np.zeros(0, np.int64))
    rows.append(np.full((1, D), np.nan, np.float32))
    with pytest.raises(ValueError):
        GalleryIndex(D).bulk_load(["a"], rows, np.zeros(1, np.int64))
    with pytest.raises(ValueError):
        RowBuffer(0)


@pytest.fixture
def held_quantiser(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Background quantisation waits until the returned event is set."""
    release = threading.Event()
    quantise = GalleryIndex._quantise

    def held(self: GalleryIndex, snap: Any) -> Any:
        if threading.current_thread().name == "gallery-quantise":
            assert release.wait(30)
        return quantise(self, snap)

    monkeypatch.setattr(GalleryIndex, "_quantise", held)
    return release


def test_background_quantisation_keeps_writes_and_searches_exact(
    small_cutoffs: None, held_quantiser: threading.Event
) -> None:
    """While the quantiser is built in the background, searches are exhaustive and writes
    apply at once (no second quantiser is built); once published, the rows added meanwhile
    are the exactly searched tail, and the removed ones stay removed."""
    rng = np.random.default_rng(11)
    vectors = _units(rng, 3_000)
    owners = np.arange(3_000, dtype=np.int64) // 3
    index = GalleryIndex(D)
    index.bulk_load([f"s{i}" for i in range(1_000)], vectors, owners, background=True)
    assert not index.approximate and not index.wait_quantised(timeout=0.01)
    late = _units(rng, 3 * 40)
    for shopper in range(40):
        index.add(f"late{shopper}", late[3 * shopper : 3 * shopper + 3])
    for shopper in range(0, 60, 2):
        assert index.remove(f"s{shopper}")
    assert not index.approximate  # still waiting for the background build
    all_vectors = np.concatenate([vectors, late])
    all_owners = [f"s{i // 3}" for i in range(3_000)] + [f"late{i // 3}" for i in range(120)]
    picks = rng.choice(all_vectors.shape[0], 60, replace=False)
    probes = _genuine(rng, all_vectors[picks])
    before = [index.search(probe, k=2) for probe in probes]
    held_quantiser.set()
    assert index.wait_quantised(timeout=30) and index.approximate
    quantised = index._snapshot.quantised
    assert quantised is not None and quantised.rows >= 3_000
    for probe, source, found in zip(probes, picks.tolist(), before, strict=True):
        expected = all_owners[source]
        gone = expected.startswith("s") and int(expected[1:]) < 60 and int(expected[1:]) % 2 == 0
        assert index.search(probe, k=2) == found
        if not gone:
            assert found[0].shopper_id == expected
        assert all(c.shopper_id not in {f"s{i}" for i in range(0, 60, 2)} for c in found)


def test_background_quantisation_yields_to_a_compaction(
    small_cutoffs: None, held_quantiser: threading.Event
) -> None:
    """A compaction renumbers the rows: the background result is dropped, the compaction's
    own quantised index stands."""
    rng = np.random.default_rng(12)
    vectors = _units(rng, 9_000)
    owners = np.arange(9_000, dtype=np.int64) // 3
    index = GalleryIndex(D)
    index.bulk_load([f"s{i}" for i in range(3_000)], vectors, owners, background=True)
    for shopper in range(0, 3_000, 2):  # half the rows dead: compacted, and quantised
        index.remove(f"s{shopper}")
    compacted = index._snapshot.quantised
    assert compacted is not None and index._snapshot.count < 9_000  # renumbered
    assert index.template_count == 4_500
    held_quantiser.set()
    assert index.wait_quantised(timeout=30)
    assert index._snapshot.quantised is compacted
    for row in (3, 303, 8_997):  # odd shoppers, kept
        assert index.search(vectors[row], k=1)[0].shopper_id == f"s{row // 3}"


@pytest.mark.parametrize("sizes", [[3, 3, 3, 3], [3, 4, 5, 3, 8, 1]])
def test_fusing_by_owner_equals_fusing_each_owner(sizes: list[int]) -> None:
    rng = np.random.default_rng(len(sizes))
    owners = np.repeat(np.arange(len(sizes)) * 2, sizes)  # owners 0, 2, 4...: gaps allowed
    rows = _units(rng, owners.size)
    expected = np.concatenate([index_module.fuse(rows[owners == o]) for o in np.unique(owners)])
    order = rng.permutation(owners.size)  # rows not grouped by owner are sorted first
    for block, who in ((rows, owners), (rows[order], owners[order])):
        fused, fused_owners = index_module.fuse_by_owner(block, who)
        assert fused_owners.tolist() == np.unique(owners).tolist()
        assert np.allclose(fused, expected, atol=1e-6)
        assert np.allclose(np.linalg.norm(fused, axis=1), 1.0, atol=1e-6)
    with pytest.raises(ValueError):
        index_module.fuse_by_owner(np.zeros((2, D), np.float32), np.array([0, 0]))
