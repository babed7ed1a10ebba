"""The split every manifest writer shares (importers and the MSD fetcher): sizes, shuffle, folds."""

from __future__ import annotations

import pytest

from pipeline.data.splits import NUM_FOLDS, split_cases, split_counts


def test_split_counts():
    assert split_counts(2) == (2, 0, 0)
    assert split_counts(3) == (1, 1, 1)
    assert split_counts(10) == (7, 1, 2)
    assert split_counts(30) == (21, 3, 6)


# Formerly MSD's own split (4/32 validation, 6/32 test); MSD now uses the importers' 70/10/20, which differs only
# for 32 cases: 23/3/6 instead of 22/4/6.
@pytest.mark.parametrize(
    ("n", "expected"),
    [(1, (1, 0, 0)), (2, (2, 0, 0)), (3, (1, 1, 1)), (4, (2, 1, 1)), (6, (4, 1, 1)), (16, (11, 2, 3)),
     (32, (23, 3, 6))],
)
def test_split_counts_sizes(n: int, expected: tuple[int, int, int]) -> None:
    assert split_counts(n) == expected
    assert sum(split_counts(n)) == n


def test_split_cases_folds_and_groups():
    cases = [{"id": f"c{i:02d}", "subject": i // 2} for i in range(20)]
    splits = split_cases(cases, seed=0, group_key="subject")
    assert [len(splits[k]) for k in ("training", "validation", "test")] == [14, 2, 4]  # 7/1/2 subjects
    for split, members in splits.items():
        assert [c["id"] for c in members] == sorted(c["id"] for c in members)
        assert {c["fold"] for c in members} <= (set(range(NUM_FOLDS)) if split == "training" else {-1})
    subjects = [{c["subject"] for c in m} for m in splits.values()]
    assert sum(len(s) for s in subjects) == len(set().union(*subjects)) == 10  # no subject in two splits
    assert {c["fold"] for c in splits["training"]} == set(range(NUM_FOLDS))


# ------------------------------------------------------------------------------------------- split_cases laws
def ids(n: int) -> list[dict]:
    return [{"id": f"case{i:03d}"} for i in range(n)]


def names(splits: dict[str, list]) -> dict[str, list[str]]:
    return {k: [c["id"] for c in v] for k, v in splits.items()}


@pytest.mark.parametrize("n", [0, 1, 2, 3, 4, 5, 7, 10, 11, 32, 101])
def test_splits_are_disjoint_cover_every_case_and_have_the_counted_sizes(n: int) -> None:
    splits = names(split_cases(ids(n), seed=3))
    every = [i for members in splits.values() for i in members]
    assert sorted(every) == [c["id"] for c in ids(n)] and len(set(every)) == n  # each case exactly once
    assert tuple(len(splits[k]) for k in ("training", "validation", "test")) == split_counts(n)


@pytest.mark.parametrize("n", [3, 4, 10, 57, 200])
def test_counts_keep_one_case_per_split_and_about_70_10_20(n: int) -> None:
    n_train, n_val, n_test = split_counts(n)
    assert min(n_train, n_val, n_test) >= 1 and n_train + n_val + n_test == n
    if n >= 50:
        assert abs(n_val - 0.1 * n) <= 1 and abs(n_test - 0.2 * n) <= 1


@pytest.mark.parametrize(("n", "val", "test", "expected"), [
    (10, 0.0, 0.0, (8, 1, 1)),  # a fraction of 0 still keeps one case (the docstring's rule)
    (4, 0.5, 0.5, (1, 2, 1)),  # fractions adding up to 1 still leave one training case (test gives first)
    (3, 0.9, 0.9, (1, 1, 1)),
    (20, 0.25, 0.25, (10, 5, 5)),
    (0, 0.1, 0.2, (0, 0, 0)),
])
def test_split_counts_with_other_fractions(n: int, val: float, test: float, expected: tuple[int, int, int]) -> None:
    assert split_counts(n, val, test) == expected


def test_the_split_is_deterministic_for_a_seed_and_ignores_the_input_order() -> None:
    cases = ids(30)
    first = names(split_cases([dict(c) for c in cases], seed=5))
    assert names(split_cases([dict(c) for c in reversed(cases)], seed=5)) == first  # sorted before shuffling
    assert names(split_cases([dict(c) for c in cases], seed=5)) == first
    others = {tuple(names(split_cases([dict(c) for c in cases], seed=s))["test"]) for s in range(6)}
    assert len(others) >= 5  # the seed matters


def test_the_shuffle_is_random_Random_seed_on_the_sorted_ids() -> None:
    """The documented recipe, step by step: a manifest written by one version stays reproducible by hand."""
    import random

    cases = ids(12)
    order = sorted(c["id"] for c in cases)
    random.Random(7).shuffle(order)
    n_train, n_val, _ = split_counts(12)
    splits = split_cases([dict(c) for c in cases], seed=7)
    assert names(splits)["training"] == sorted(order[:n_train])
    assert names(splits)["validation"] == sorted(order[n_train:n_train + n_val])
    folds = {c["id"]: c["fold"] for c in splits["training"]}
    assert [folds[i] for i in order[:n_train]] == [i % NUM_FOLDS for i in range(n_train)]  # round-robin


@pytest.mark.parametrize("n", [5, 14, 23])
def test_training_folds_are_balanced_and_the_rest_fold_minus_one(n: int) -> None:
    splits = split_cases(ids(n), seed=1)
    counts = [sum(c["fold"] == f for c in splits["training"]) for f in range(NUM_FOLDS)]
    assert max(counts) - min(counts) <= 1 and sum(counts) == len(splits["training"])
    assert all(c["fold"] == -1 for s in ("validation", "test") for c in splits[s])


def test_fewer_than_three_groups_split_by_case() -> None:
    """Two subjects cannot fill three splits: the cases are split one by one (the subject rule is off)."""
    cases = [{"id": f"c{i}", "subject": i % 2} for i in range(10)]
    splits = split_cases(cases, seed=0, group_key="subject")
    assert tuple(len(splits[k]) for k in ("training", "validation", "test")) == split_counts(10)


def test_groups_keep_every_member_together_with_one_fold() -> None:
    cases = [{"id": f"c{i:02d}", "subject": f"s{i // 3}"} for i in range(30)]  # 10 subjects of 3 cases
    splits = split_cases(cases, seed=2, group_key="subject")
    where: dict[str, set[tuple[str, int]]] = {}
    for split, members in splits.items():
        for c in members:
            where.setdefault(c["subject"], set()).add((split, c["fold"]))
    assert len(where) == 10 and all(len(v) == 1 for v in where.values())  # one split and one fold per subject
    assert [len({c["subject"] for c in splits[k]}) for k in ("training", "validation", "test")] == list(
        split_counts(10))


def test_the_manifest_keeps_the_folds_it_was_written_with(tmp_path) -> None:
    """Folds written by the importers (``write_manifest``) come back from ``load_manifest`` as they are, and a
    fold a manifest states by hand is kept (no re-split on loading)."""
    import json

    from pipeline.data.manifest import load_manifest
    from pipeline.data.storage import write_manifest

    cases = []
    for c in ids(12):
        for kind in ("images", "labels"):
            (tmp_path / kind).mkdir(exist_ok=True)
            (tmp_path / kind / f"{c['id']}.nii.gz").write_bytes(b"")
        cases.append({**c, "image": str(tmp_path / "images" / f"{c['id']}.nii.gz"),
                      "label": str(tmp_path / "labels" / f"{c['id']}.nii.gz"), "spacing": [1.0, 1.0, 1.0]})
    base = {"name": "folds", "labels": {"0": "background", "1": "organ"}, "modality": {"0": "T2"}}
    written = write_manifest(tmp_path / "dataset.json", base, cases, seed=4)
    expected = {e["id"]: e["fold"] for s in ("training", "validation", "test") for e in written[s]}
    assert set(expected.values()) == set(range(NUM_FOLDS)) | {-1}
    loaded = load_manifest(tmp_path / "dataset.json")
    assert {c.id: c.fold for c in loaded.all_cases()} == expected

    doc = json.loads((tmp_path / "dataset.json").read_text())
    doc["training"][0]["fold"] = 3
    doc["training"][1].pop("fold")
    (tmp_path / "dataset.json").write_text(json.dumps(doc))
    folds = {c.id: c.fold for c in load_manifest(tmp_path / "dataset.json").all_cases()}
    assert folds[doc["training"][0]["id"]] == 3 and folds[doc["training"][1]["id"]] is None


def test_rel_to_is_posix_and_relative_to_the_manifest_folder(tmp_path) -> None:
    from pipeline.data.splits import rel_to

    assert rel_to(tmp_path / "a" / "b.nii.gz", tmp_path) == "a/b.nii.gz"
    assert rel_to(tmp_path / "x.nii", tmp_path / "sub") == "../x.nii"
