"""Runs stages in graph order, reusing every stage whose key (config + inputs + package version) is unchanged.

Layout of a run folder (``runs/<workflow>/<run-id>/`` by default; the id is a hash of the config of the stages
that name the run, so rerunning an unchanged workflow lands in the same folder and reuses everything)::

    workflow.yaml        the resolved workflow
    summary.json         written by the evaluate stage
    _run.lock            the lock a running ``pipeline run`` holds on the folder (:mod:`pipeline.engine.lock`)
    <stage>/_stage.json  reuse key, identity, typed record and timing of a finished stage
    <stage>/_started.json  the key of an attempt in progress (an interrupted attempt with the same key resumes)
    <stage>/...          the stage's files

A stage's key covers its own config (:meth:`Stage.config`), its external inputs (:meth:`Stage.fingerprint`), the
identities of the records it requires and the package version, so an upgrade re-runs every stage. ``--from STAGE``
is the escape: stages before STAGE whose config and inputs are unchanged are reused even if an older version
made them.

Crash safety: :func:`execute` holds the run folder's lock for the whole run (a second run on the same folder is
refused at once), then removes the temporaries that killed writers left in the folder and its stage folders (no
live writer can own them under the lock). SIGTERM is turned into ``KeyboardInterrupt`` while it runs, so a kill
ends like Ctrl-C: the open atomic write removes its temporary, the hooks end the run ``KILLED`` and the command
line says how to resume. Every file is written atomically and a stage only counts as finished once its record is,
so a process killed at any point (SIGKILL) leaves a folder that the same command resumes.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import signal
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.config.schema import Workflow
from pipeline.engine.graph import ancestors, check_stage_name, descendants
from pipeline.engine.hooks import HookSet, RunEnded, RunStarted, StageDone, StageStarting
from pipeline.engine.lock import RunLock, is_rank_zero
from pipeline.engine.records import (
    RECORD,
    STARTED,
    content_id,
    digest,
    files_exist,
    read_finished,
    read_json,
)
from pipeline.engine.stage import Stage, StageContext, StageRecord
from pipeline.errors import PipelineError
from pipeline.io.atomic import make_folder, remove_stale_temporaries_under, write_faults, write_json, write_text

log = logging.getLogger("pipeline")

RUN_FOLDER = "run folder (--run-dir)"  # what refusals of the run folder call it


@dataclass
class RunResult:
    """What ran, what was reused, and every stage's record."""

    run_dir: Path
    executed: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    records: dict[str, StageRecord] = field(default_factory=dict)


def run_name_hash(workflow: Workflow, stages: Sequence[Stage]) -> str:
    """A short hash of the config of the stages marked ``names_run`` and of every stage they depend on."""
    graph = {s.name: type(s) for s in stages}
    named = {s.name for s in stages if s.names_run}
    for name in list(named):
        named |= ancestors(name, graph)
    return digest({"workflow": workflow.name, "stages": {s.name: s.config(workflow) for s in stages
                                                         if s.name in named}})[:10]


def execute(
    workflow: Workflow,
    stages: Sequence[Stage],
    run_dir: Path,
    *,
    version: str,
    hooks: HookSet | None = None,
    started: RunStarted | None = None,
    from_stage: str | None = None,
    only: str | None = None,
    force: bool = False,
    files: Mapping[str, str] | None = None,
) -> RunResult:
    """Run (or reuse) ``stages`` (already in graph order) of a validated workflow in ``run_dir``.

    Args:
        version: the package version, part of every stage key.
        hooks: receive run started / stage done / run ended; their failures never fail the run.
        started: the run-started event to emit (default: the run folder's name).
        from_stage: re-run this stage and every stage that depends on it.
        only: run just this stage (re-running it); the stages it depends on must be finished.
        force: re-run every stage.
        files: text files written into ``run_dir`` before the first stage (e.g. the resolved ``workflow.yaml``).

    Raises:
        PipelineError: bad input, or another run works in ``run_dir``; a run folder this call created is removed
            if no stage finished in it.
        KeyboardInterrupt: Ctrl-C or SIGTERM (the hooks were told the run was ``KILLED``).
    """
    names = [s.name for s in stages]
    check_stage_name("--from", from_stage, names)
    check_stage_name("--only", only, names)
    graph = {s.name: type(s) for s in stages}
    rerun_names = set(names) if force else set()
    if from_stage:
        rerun_names |= {from_stage} | descendants(from_stage, graph)
    if only:
        rerun_names.add(only)
    wanted = ({only} | ancestors(only, graph)) if only else set(names)
    escape = from_stage is not None or only is not None  # reuse unchanged earlier stages made by another version
    hooks = hooks or HookSet()
    created = not run_dir.exists()
    try:
        make_folder(run_dir, RUN_FOLDER)  # a file, a dangling symlink, a read-only parent: refused, named
        lock = RunLock.acquire(run_dir) if is_rank_zero() else None
    except PipelineError as exc:
        # Ended before it started: the hooks close (the tracking process exits) and no MLflow run is made.
        hooks.run_ended(RunEnded("FAILED", error=str(exc)))
        raise
    try:
        with _sigterm_as_interrupt():
            return _execute_locked(workflow, stages, run_dir, version, hooks, started, from_stage, only, force,
                                   files or {}, created, rerun_names, wanted, escape, graph)
    finally:
        if lock is not None:
            lock.release()


def _execute_locked(workflow: Workflow, stages: Sequence[Stage], run_dir: Path, version: str, hooks: HookSet,
                    started: RunStarted | None, from_stage: str | None, only: str | None, force: bool,
                    files: Mapping[str, str], created: bool, rerun_names: set[str], wanted: set[str], escape: bool,
                    graph: Mapping[str, type[Stage]]) -> RunResult:
    """:func:`execute` once the run folder is locked."""
    if is_rank_zero():
        for stale in remove_stale_temporaries_under([run_dir], recursive=False) + \
                remove_stale_temporaries_under([run_dir / s.name for s in stages]):
            log.info("removed %s left by an interrupted run", stale)
    for name, text in files.items():
        write_text(run_dir / name, text)
    result = RunResult(run_dir)
    executions: dict[str, str] = {}
    hooks.run_started(started or RunStarted(run_dir.name, run_dir))
    status, error = "FAILED", None
    try:
        for stage in stages:
            if stage.name not in wanted:
                continue
            stage_dir = run_dir / stage.name
            upstream_ids = {r: stage.upstream_identity(r, result.records[r], executions[r]) for r in stage.requires}
            content_key = digest({"stage": stage.name, "config": stage.config(workflow),
                                  "fingerprint": stage.fingerprint(workflow), "upstream": upstream_ids})
            key = digest({"content": content_key, "version": version})
            done = read_finished(stage_dir, stage)
            valid = (done is not None and (done.key == key or (escape and stage.name not in rerun_names
                                                              and done.content_key == content_key))
                     and files_exist(run_dir, done.record) and stage.is_current(workflow, done.record))
            ctx = StageContext(workflow=workflow, run_dir=run_dir, stage_dir=stage_dir,
                               upstream={r: result.records[r] for r in stage.requires})
            if only is not None and stage.name != only and not valid:
                raise PipelineError(f"--only {only}: stage '{stage.name}' has not finished with the current config "
                                    f"in {run_dir}; run the workflow without --only first")
            if valid and stage.name not in rerun_names:
                assert done is not None
                if done.key != key:  # made by another version: adopted, so later plain runs reuse it too
                    log.info("[%s] reused: made by version %s (unchanged config and inputs; %s)", stage.name,
                             done.version, "--from" if from_stage else "--only")
                    write_json(stage_dir / RECORD, {**done.saved, "key": key, "version": version,
                                                    "adopted_from_version": done.version})
                record, executions[stage.name], seconds = done.record, done.execution, None
                result.reused.append(stage.name)
                log.info("[%s] reused (unchanged since %s)", stage.name, done.finished_at)
            else:
                hooks.stage_starting(StageStarting(stage.name))
                record, seconds = _run_stage(stage, ctx, key, force or stage.name in rerun_names)
                executions[stage.name] = content_id(run_dir, record, upstream_ids)
                write_json(stage_dir / RECORD, {
                    "key": key, "content_key": content_key, "version": version,
                    "execution": executions[stage.name], "seconds": round(seconds, 3),
                    "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "record": record.model_dump(mode="json"),
                })
                (stage_dir / STARTED).unlink(missing_ok=True)
                result.executed.append(stage.name)
                log.info("[%s] done in %.1f s", stage.name, seconds)
            result.records[stage.name] = record
            hooks.stage_done(StageDone(stage.name, seconds is None, seconds, stage.report(ctx, record)))
        status = "FINISHED"
    except BaseException as exc:
        interrupted = isinstance(exc, KeyboardInterrupt)
        status, error = ("KILLED", None) if interrupted else ("FAILED", str(exc) or type(exc).__name__)
        if created and not any(read_json(p / RECORD) for p in run_dir.iterdir() if p.is_dir()):
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    finally:
        hooks.run_ended(RunEnded(status, error=error))
    return result


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """While the block runs, SIGTERM raises ``KeyboardInterrupt`` in the main thread (a kill cleans up like Ctrl-C);
    SIGTERMs that arrive during that clean-up are ignored so it can finish. The previous handler is put back after.
    Outside the main thread (signals cannot be handled there) nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = False

    def interrupt(signum: int, frame: object) -> None:
        nonlocal received
        if received:
            log.warning("SIGTERM again: still cleaning up after the first one")
            return
        received = True
        log.warning("SIGTERM received: stopping")
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)  # None: set outside Python


def _run_stage(stage: Stage, ctx: StageContext, key: str, rerun: bool) -> tuple[StageRecord, float]:
    """Run one stage, resuming an interrupted attempt with the same key unless asked to re-run."""
    started = read_json(ctx.stage_dir / STARTED)
    ctx.resume = not rerun and started is not None and started.get("key") == key
    if not ctx.resume and ctx.stage_dir.exists():
        with write_faults(ctx.stage_dir, RUN_FOLDER, folder=True):
            shutil.rmtree(ctx.stage_dir)
    make_folder(ctx.stage_dir, RUN_FOLDER)
    write_json(ctx.stage_dir / STARTED, {"key": key})
    log.info("[%s] %s", stage.name, "resuming" if ctx.resume else "running")
    t0 = time.perf_counter()
    record = stage.run(ctx)
    if not isinstance(record, stage.record):
        raise TypeError(f"stage '{stage.name}' returned {type(record).__name__}, not its {stage.record.__name__}")
    return record, time.perf_counter() - t0

