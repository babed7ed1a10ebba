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
