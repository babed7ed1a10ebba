"""Command-line flags with values out of range: one line naming the flag, the rule and the value."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.hostile.harness import refused
from tests.utils import AFFINES, write_nifti


@pytest.mark.parametrize(("flag", "value", "rule"), [
    ("--smooth-sigma-mm", "0", "greater than 0"),
    ("--bilateral-weight", "-1", "greater than or equal to 0"),
    ("--iterations", "0", "greater than or equal to 1"),
    ("--bilateral-sigma-intensity", "inf", "finite number"),
])
def test_crf_flag_out_of_range(tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str, value: str,
                               rule: str) -> None:
    """`pipeline crf --smooth-sigma-mm 0` (and other CRF flags out of range) → "--smooth-sigma-mm: Input should be
    greater than 0, got 0.0", no pydantic dump, no output written."""
    probs = np.full((6, 5, 4, 2), 0.5, np.float32)
    image = np.zeros((6, 5, 4), np.float32)
    write_nifti(tmp_path / "p.nii.gz", probs, AFFINES["ras"])
    write_nifti(tmp_path / "i.nii.gz", image, AFFINES["ras"])
    out = tmp_path / "l.nii.gz"
    r = refused(["crf", "--probs", str(tmp_path / "p.nii.gz"), "--image", str(tmp_path / "i.nii.gz"),
                 "--out", str(out), flag, value], capsys, [flag, rule])
    assert "errors.pydantic.dev" not in r.message and r.message.count("\n") == 1
    assert not out.exists()
