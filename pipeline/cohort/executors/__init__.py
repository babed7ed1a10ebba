"""Executors of ``pipeline infer``: how a batch's cases are run, registered by the name ``--executor`` takes.

Every module of this package is imported when the package is, so adding an executor means adding one file whose
function is decorated with ``@EXECUTORS.register("name")`` (called as :class:`Executor` says) and its test; the
command line's ``--executor`` choices are the registered names. The modules import torch, Ray and the per-case
runner inside their functions: the command line imports this package to build its parser.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

from pipeline.registry import Registry, import_submodules

if TYPE_CHECKING:
    from pipeline.bundle import Bundle
    from pipeline.cohort import InferOptions
    from pipeline.cohort.inputs import Job
    from pipeline.cohort.report import Row


class Executor(Protocol):
    """Runs ``jobs`` with ``bundle`` and ``options``, calling ``on_row`` with each case's report row as the case
    ends (in any order); a case that fails is a ``failed`` row, not an exception.

    Args:
        address: where the executor's cluster is (``--ray-address``); ``None``: its default.
        workers: how many model copies run at once (``--ray-workers``); ``None``: the executor's choice.
        on_started: called once the one model of the executor is ready, with its resolved precision and its
            ``torch.compile`` warm-up seconds (None without compile), for the report; executors with several
            model copies do not call it.
    """

    def __call__(self, bundle: Bundle, options: InferOptions, jobs: Sequence[Job], on_row: Callable[[Row], None],
                 address: str | None = None, workers: int | None = None,
                 on_started: Callable[[str, float | None], None] | None = None) -> None: ...


EXECUTORS: Registry[Executor] = Registry("executor")


import_submodules(__name__, __path__)  # each module registers itself

__all__ = ["EXECUTORS", "Executor"]
