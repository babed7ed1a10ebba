"""Domain metrics are chosen by the manifest's ``domain`` through a registry, not by string prefixes."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from pipeline.config.schema import EvaluateConfig
from pipeline.evaluation.domain_metrics import DOMAIN_METRICS, domain_rows


def _case() -> SimpleNamespace:
    return SimpleNamespace(id="c0", extras={})


def test_unregistered_domains_get_no_domain_metrics() -> None:
    truth = np.zeros((8, 8), dtype=np.int64)
    truth[2:5, 2:5] = 1
    for domain in ("", "prostate_mri", "cells", "octopus"):  # no prefix matching: "cells" is not cell_microscopy
        assert domain not in DOMAIN_METRICS
        assert domain_rows(domain, _case(), truth, truth, [1.0, 1.0], EvaluateConfig()) == []


def test_every_registered_domain_gives_rows_for_a_2d_case() -> None:
    truth = np.zeros((32, 24), dtype=np.int64)
    for x in range(32):  # layered "retina": label = depth band, so OCT boundaries exist too
        truth[x, 4:20] = 1 + (np.arange(16) // 2)
    for domain in DOMAIN_METRICS.names():
        rows = domain_rows(domain, _case(), truth, truth, [0.01, 0.004], EvaluateConfig())
        assert rows and all(r["case"] == "c0" for r in rows), domain


def test_a_registered_domain_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    def count(case, truth, pred, spacing, settings):  # type: ignore[no-untyped-def]
        return [{"case": case.id, "voxels": int((pred > 0).sum())}]

    monkeypatch.setitem(DOMAIN_METRICS._items, "histology", count)
    pred = np.ones((4, 4), dtype=np.int64)
    assert domain_rows("histology", _case(), pred, pred, [1.0, 1.0], EvaluateConfig()) == [{"case": "c0", "voxels": 16}]
