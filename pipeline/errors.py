"""User-facing errors.

A :class:`PipelineError` is a mistake in the user's input (a workflow file, a manifest, an image): the command line
prints its message without a traceback and exits non-zero. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class PipelineError(Exception):
    """An error caused by the user's input, reported as one clear message."""


class ConfigError(PipelineError):
    """A workflow or preset file is malformed or invalid; carries every problem found."""

    def __init__(self, file: str, problems: list[str]) -> None:
        self.file = file
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{file}: {len(self.problems)} problem(s) in the workflow:\n{lines}")


class DataError(PipelineError):
    """A manifest, image or label is missing, corrupt or inconsistent."""
