"""Test-only: run the ``pipeline`` command line and SIGKILL it at a precise point, without hooks in production code
(and two helpers of the crash tests: :func:`temporaries`, :func:`wait_no_running`).

Usage::

    python tests/engine/kill_helper.py POINT N -- <pipeline arguments>

``POINT`` is one of

* ``call:MODULE:NAME``: the process kills itself on the N-th call of the function ``NAME`` of ``MODULE`` (looked up
  there at call time, e.g. ``pipeline.training.trainer:compute_loss``, one training step), before the call runs;
* ``replace:GLOB``: it kills itself at the N-th ``os.replace`` of a temporary onto a path matching ``GLOB``
  (fnmatch on the whole path), i.e. inside :func:`pipeline.io.atomic.atomic_path` once the temporary is fully
  written and before it is renamed (``*/train/last.pt``: inside ``save_checkpoint``, between ``torch.save`` and
  the rename). The temporary is left behind, as a real kill leaves it.

The process that reaches the point dies with SIGKILL (exit status -9): no handler, ``finally`` or ``atexit`` runs.
If the point is never reached the command finishes normally and its exit code is returned.

``python tests/engine/kill_helper.py --serve`` does the same for many commands at a fraction of the cost: it imports
the command line and every stage once (about 8 s a process on 2 cores), then for each request on stdin (one JSON
line: ``{"point": ..., "n": ..., "args": [...], "log": FILE}``) forks a child that arms the point and runs the
command with stdout and stderr to ``FILE``, and answers one JSON line, ``{"code": EXIT_CODE}`` (-9: killed at
the point). The parent runs no PyTorch operation, so the children start from a clean state (no thread pool yet).
"""

from __future__ import annotations

import fnmatch
import importlib
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script from anywhere: `pipeline` and `tests`


def temporaries(folder: Path) -> list[str]:
    """What killed writers left under ``folder`` (``.<name>.part...``), relative to it."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.name.startswith(".") and ".part" in p.name)


def wait_no_running(uri: str, timeout: float = 60.0) -> list[Any]:
    """Every MLflow run of the store once none is RUNNING (a killed run's tracking process ends it KILLED shortly
    after its parent died), or at the timeout."""
    from pipeline.tracking.tracker import mlflow_client

    client = mlflow_client(uri)
    deadline = time.time() + timeout
    while True:
        runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
        if not any(r.info.status == "RUNNING" for r in runs) or time.time() > deadline:
            return runs
        time.sleep(0.5)


def _die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _arm_call(module_name: str, name: str, n: int) -> None:
    module = importlib.import_module(module_name)
    real = getattr(module, name)
    calls = {"n": 0}

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == n:
            _die()
        return real(*args, **kwargs)

    setattr(module, name, wrapper)


def _arm_replace(pattern: str, n: int) -> None:
    real = os.replace
    calls = {"n": 0}

    def replace(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        if fnmatch.fnmatch(os.fspath(dst), pattern) and ".part" in os.path.basename(os.fspath(src)):
            calls["n"] += 1
            if calls["n"] == n:
                _die()
        real(src, dst, *args, **kwargs)

    os.replace = replace  # type: ignore[assignment]  # this process only (the tracking process is another one)


def _arm(point: str, n: int) -> None:
    kind, _, spec = point.partition(":")
    if kind == "call":
        module_name, _, name = spec.partition(":")
        _arm_call(module_name, name, n)
    elif kind == "replace":
        _arm_replace(spec, n)
    else:
        raise SystemExit(f"unknown kill point {point!r}")


def _serve() -> int:
    from pipeline.cli import main as pipeline_main
    from pipeline.stages import stage_classes

    stage_classes()  # every stage module and what it imports (PyTorch, MONAI, matplotlib), once
    for line in sys.stdin:
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the child: one command, then out without the parent's clean-up
            code = 70
            try:
                fd = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(fd, 1)
                os.dup2(fd, 2)
                os.close(fd)
                _arm(request["point"], int(request["n"]))
                code = pipeline_main(list(request["args"]))
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:  # noqa: BLE001 - any failure: its traceback in the log, exit 70
                import traceback

                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"code": os.waitstatus_to_exitcode(status)}), flush=True)
    return 0


def main(argv: list[str]) -> int:
    if argv == ["--serve"]:
        return _serve()
    if len(argv) < 3 or argv[2] != "--":
        print(__doc__, file=sys.stderr)
        return 2
    point, n, args = argv[0], int(argv[1]), argv[3:]
    _arm(point, n)
    from pipeline.cli import main as pipeline_main

    return pipeline_main(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
