"""Where a run comes from, as MLflow tags: the package version, the workflow file, its git commit, the user."""

from __future__ import annotations

import getpass
import subprocess
from pathlib import Path

import pipeline


def git_state(path: Path) -> tuple[str, bool] | None:
    """``(commit, has uncommitted changes)`` of the git checkout holding ``path``; None outside one (or without
    git)."""
    folder = path if path.is_dir() else path.parent
    try:
        head = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(folder), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (head, bool(dirty)) if head else None


def source_tags(workflow_file: Path, workflow_name: str, run_dir: Path) -> dict[str, str]:
    """The tags MLflow's UI shows as a run's source, user and version, and the pipeline's own."""
    tags = {
        "mlflow.source.name": str(workflow_file),
        "mlflow.source.type": "LOCAL",
        "mlflow.user": _user(),
        "pipeline.version": pipeline.__version__,
        "workflow": workflow_name,
        "workflow_file": str(workflow_file),
        "run_dir": str(run_dir),
    }
    git = git_state(workflow_file.resolve())
    if git is not None:
        tags["mlflow.source.git.commit"] = git[0]
        tags["git_dirty"] = str(git[1]).lower()
    return tags


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
