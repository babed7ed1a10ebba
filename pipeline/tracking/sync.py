"""``pipeline tracking sync RUN_DIR``: push what a run recorded in its local fallback store to the tracking server.

A run whose tracking server was away records to ``RUN_DIR/mlflow-fallback`` (:mod:`pipeline.tracking.fallback`);
``pending.json`` there lists each such MLflow run with its server and, when the server run was created before the
server went away, the server run's id. :func:`sync_run` pushes each run not synced yet:

- into the server run of ``pending.json``; when there is none, into a new run in the experiment of the same name
  (same run name, tags and start time, and the tag ``pipeline.fallback_run_id``), whose id is written to
  ``pending.json`` before anything is pushed, so a rerun pushes into the same run;
- params missing on the server (one already there with the same value is skipped; another value is reported: MLflow
  params cannot change); every metric value, with its step and timestamp, that the server's history lacks (compared
  by ``(key, step, timestamp, value)``); tags whose value differs; dataset inputs; artifacts missing on the server
  or of another size (compared with the server's recursive listing; images logged by key are matched by key, step
  and timestamp, since MLflow names their files with a random id); then the status and end time.

What is on the server already is never pushed again, so a sync interrupted half-way (the server went away again,
Ctrl-C) is simply run again. A fallback run that ended is then marked synced in ``pending.json`` and a later sync
says there is nothing to push; one still ``RUNNING`` (the run is still going, or was killed) is pushed but not
marked, and can be synced again once it ended.
"""

from __future__ import annotations

import collections
import json
import logging
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from pipeline.errors import PipelineError
from pipeline.tracking.fallback import (
    FALLBACK_DIR,
    PENDING_FILE,
    SYNC_COMMAND,
    _now_iso,
    _retries_quiet,
    _short,
    check_server,
    fail_fast_http,
    fallback_dir,
    fallback_uri,
    is_remote,
    read_pending,
    write_pending,
)

log = logging.getLogger("pipeline")

SYNC_TAG = "pipeline.fallback_run_id"  # on a server run made by a sync: the fallback run it holds
TERMINAL = ("FINISHED", "FAILED", "KILLED")
# MLflow's time-stepped images: images/<key>+step+<step>+timestamp+<ms>+<uuid>(.png | +compressed.webp)
_IMAGE = re.compile(r"^(images/.+\+step\+\d+\+timestamp\+\d+)\+([0-9a-f-]{36})(\.png|\+compressed\.webp)$")


@dataclass
class SyncResult:
    """What a sync pushed: counts over every fallback run of the folder.

    Attributes:
        server_runs: ``(server URI, server run id)`` of each run pushed to or already synced.
        created: server runs created (the server was away when the run started).
        params, metrics, tags, datasets, artifacts: values pushed (metrics: values of a history, each step).
        ended: runs whose status and end time were set on the server.
        already_synced: fallback runs synced by an earlier sync (nothing pushed for them).
        still_running: fallback runs still ``RUNNING``: pushed so far, to be synced again once they end.
        param_conflicts: params the server holds with another value (MLflow params cannot change).
    """

    server_runs: list[tuple[str, str]] = field(default_factory=list)
    created: int = 0
    params: int = 0
    metrics: int = 0
    tags: int = 0
    datasets: int = 0
    artifacts: int = 0
    ended: int = 0
    already_synced: int = 0
    still_running: int = 0
    param_conflicts: list[str] = field(default_factory=list)

    @property
    def pushed(self) -> int:
        """How many things were pushed (0: nothing to push)."""
        return self.created + self.params + self.metrics + self.tags + self.datasets + self.artifacts + self.ended

    def describe(self) -> str:
        """One or two lines for the command line."""
        where = ", ".join(f"{uri} run {rid}" for uri, rid in self.server_runs) or "the server (no runs recorded)"
        if not self.pushed and not self.still_running:
            return f"nothing to push: already synced to {where}"
        done = (f"{self.params} params, {self.metrics} metric values, {self.tags} tags, {self.datasets} datasets, "
                f"{self.artifacts} artifacts" + (f", {self.ended} run status" if self.ended else ""))
        lines = [f"pushed to {where}: {done}" + (f" (new server runs: {self.created})" if self.created else "")]
        if self.param_conflicts:
            lines.append(f"params the server holds with another value (kept): {', '.join(self.param_conflicts)}")
        if self.still_running:
            lines.append(f"{self.still_running} run(s) still RUNNING in the fallback store (still going, or killed): "
                         "sync again once it ended")
        return "\n".join(lines)


def sync_run(run_dir: Path, tracking_uri: str | None = None) -> SyncResult:
    """Push the runs recorded in ``RUN_DIR/mlflow-fallback`` to their tracking server.

    Args:
        run_dir: the run folder (or the output folder of a ``pipeline infer`` batch).
        tracking_uri: push there instead of the server each run was meant for (a run then goes into a new run
            there, not into the server run of ``pending.json``).

    Returns:
        The counts of what was pushed.

    Raises:
        PipelineError: no fallback store in ``run_dir``; the server is still unreachable; the server failed
            part-way (run the command again: nothing is pushed twice).
    """
    from mlflow.exceptions import MlflowException
    from requests import RequestException

    run_dir = Path(run_dir).resolve()
    folder = fallback_dir(run_dir)
    if not (folder / "mlflow.db").is_file() or not (folder / PENDING_FILE).is_file():
        raise PipelineError(f"{run_dir}: no local MLflow fallback store ({FALLBACK_DIR}/ with mlflow.db and "
                            f"{PENDING_FILE}); a run records there only when its tracking server could not be "
                            "reached. Give the run folder `pipeline run` printed (for `pipeline infer`: its --output "
                            "folder)")
    doc = read_pending(run_dir)
    result = SyncResult()
    todo = []
    for entry in doc["runs"]:
        if entry.get("synced_at") and (tracking_uri is None or tracking_uri == entry.get("server_uri")):
            result.already_synced += 1
            result.server_runs.append((entry["server_uri"], entry["server_run_id"]))
        else:
            todo.append(entry)
    if not todo:
        return result
    for uri in dict.fromkeys(tracking_uri or e["server_uri"] for e in todo):
        if is_remote(uri):
            fail_fast_http()
            reason = check_server(uri)
            if reason is not None:
                raise PipelineError(
                    f"MLflow server {uri} is still unreachable ({reason}); nothing was pushed. Start it (or check "
                    f"the address), then run `{SYNC_COMMAND} {run_dir}` again; to push to another server, add "
                    "--tracking-uri URI")
    for entry in todo:
        uri = tracking_uri or entry["server_uri"]
        try:
            with _retries_quiet():
                _sync_entry(run_dir, entry, uri, result)
        except (MlflowException, RequestException) as exc:
            raise PipelineError(
                f"pushing {run_dir} to MLflow server {uri} failed part-way ({_short(exc)}); run `{SYNC_COMMAND} "
                f"{run_dir}` again: what is on the server already is not pushed twice") from exc
    return result


def _save_entry(run_dir: Path, entry: dict[str, Any]) -> None:
    """Write one entry of ``pending.json`` back, read afresh: a run that falls back into the same folder meanwhile
    (another ``pipeline run`` there) keeps its own entry."""
    doc = read_pending(run_dir)
    runs = doc["runs"]
    for i, e in enumerate(runs):
        if e.get("fallback_run_id") == entry["fallback_run_id"]:
            runs[i] = entry
            break
    else:
        runs.append(entry)
    write_pending(run_dir, doc)


def _sync_entry(run_dir: Path, entry: dict[str, Any], uri: str, result: SyncResult) -> None:
    """Push one fallback run (one entry of ``pending.json``), keeping ``pending.json`` up to date."""
    from mlflow.tracking import MlflowClient

    local = MlflowClient(tracking_uri=fallback_uri(run_dir))
    server = MlflowClient(tracking_uri=uri)
    fb_run = local.get_run(entry["fallback_run_id"])
    if uri != entry["server_uri"]:  # another server: the recorded server run is not there
        entry.update(server_uri=uri, server_run_id=None, synced_at=None)
        _save_entry(run_dir, entry)
    srv_run = _server_run(server, entry)
    if srv_run is None:
        srv_run = _create_server_run(server, local, fb_run, entry, uri)
        entry["server_run_id"] = srv_run.info.run_id
        _save_entry(run_dir, entry)  # before anything is pushed: a rerun pushes into this run
        result.created += 1
    run_id = srv_run.info.run_id
    result.server_runs.append((uri, run_id))

    _push_params(server, fb_run, srv_run, result)
    _push_metrics(server, local, fb_run, srv_run, result)
    _push_tags(server, fb_run, srv_run, result)
    _push_datasets(server, fb_run, srv_run, result)
    _push_artifacts(server, run_dir, fb_run, run_id, result)

    status, end_time = fb_run.info.status, fb_run.info.end_time
    if status not in TERMINAL:
        result.still_running += 1
        log.warning("the fallback run %s is still %s: pushed so far; sync again once it ended",
                    fb_run.info.run_id, status)
        return
    if srv_run.info.status != status or srv_run.info.end_time != end_time:
        server.set_terminated(run_id, status=status, end_time=end_time)
        result.ended += 1
    entry["synced_at"] = _now_iso()
    _save_entry(run_dir, entry)
    _update_run_file(run_dir, uri, entry)


def _server_run(server: Any, entry: dict[str, Any]) -> Any:
    """The server run of an entry: the one recorded, else one an interrupted sync created (found by its tag)."""
    from mlflow.exceptions import MlflowException

    if entry.get("server_run_id"):
        try:
            run = server.get_run(entry["server_run_id"])
        except MlflowException as exc:
            if getattr(exc, "error_code", "") != "RESOURCE_DOES_NOT_EXIST":
                raise
            run = None  # the server lost it (a new database): push into a new run
        if run is not None:
            if run.info.lifecycle_stage == "deleted":
                raise PipelineError(f"the server run {run.info.run_id} was deleted on {entry['server_uri']}: restore "
                                    "it (MLflow UI, or `MlflowClient().restore_run(RUN_ID)`) and sync again, or "
                                    "push into a new run elsewhere with --tracking-uri URI")
            return run
    exp = server.get_experiment_by_name(entry["experiment"])
    if exp is None:
        return None
    found = server.search_runs([exp.experiment_id], filter_string=f"tags.`{SYNC_TAG}` = '{entry['fallback_run_id']}'",
                               max_results=1)
    return found[0] if found else None


def _create_server_run(server: Any, local: Any, fb_run: Any, entry: dict[str, Any], uri: str) -> Any:
    """A server run for a fallback run that has none: same experiment name, run name, tags and start time."""
    from pipeline.tracking.tracker import experiment_id

    fb_exp = local.get_experiment(fb_run.info.experiment_id)
    exp_id = experiment_id(server, entry["experiment"], uri, tags=dict(fb_exp.tags))
    tags = {k: v for k, v in fb_run.data.tags.items() if k != "mlflow.runName"}
    tags[SYNC_TAG] = fb_run.info.run_id
    return server.create_run(exp_id, start_time=fb_run.info.start_time, tags=tags, run_name=fb_run.info.run_name)


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _push_params(server: Any, fb_run: Any, srv_run: Any, result: SyncResult) -> None:
    from mlflow.entities import Param

    have = srv_run.data.params
    missing = [Param(k, v) for k, v in fb_run.data.params.items() if k not in have]
    conflicts = [k for k, v in fb_run.data.params.items() if k in have and have[k] != v]
    for chunk in _chunks(missing, 100):
        server.log_batch(srv_run.info.run_id, params=chunk)
    result.params += len(missing)
    if conflicts:
        log.warning("params the server run %s holds with another value (kept): %s", srv_run.info.run_id,
                    ", ".join(conflicts))
        result.param_conflicts += conflicts


def _metric_key(m: Any) -> tuple[int, int, Any]:
    value = float(m.value)
    return (int(m.step), int(m.timestamp), "nan" if math.isnan(value) else value)


def _push_metrics(server: Any, local: Any, fb_run: Any, srv_run: Any, result: SyncResult) -> None:
    """Every value of every metric history the server lacks (a multiset difference: a value logged twice at the
    same step and millisecond is pushed twice, once each)."""
    from mlflow.entities import Metric

    run_id = srv_run.info.run_id
    missing: list[Any] = []
    for key in sorted(fb_run.data.metrics):
        wanted = collections.Counter(_metric_key(m) for m in local.get_metric_history(fb_run.info.run_id, key))
        if key in srv_run.data.metrics:
            wanted -= collections.Counter(_metric_key(m) for m in server.get_metric_history(run_id, key))
        for (step, ts, value), n in sorted(wanted.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            missing += [Metric(key, float(value), ts, step)] * n
    for chunk in _chunks(missing, 500):
        server.log_batch(run_id, metrics=chunk)
    result.metrics += len(missing)


def _push_tags(server: Any, fb_run: Any, srv_run: Any, result: SyncResult) -> None:
    from mlflow.entities import RunTag

    have = srv_run.data.tags
    changed = [RunTag(k, v) for k, v in fb_run.data.tags.items() if have.get(k) != v]
    for chunk in _chunks(changed, 100):
        server.log_batch(srv_run.info.run_id, tags=chunk)
    result.tags += len(changed)


def _dataset_key(d: Any) -> tuple[str, str, tuple[tuple[str, str], ...]]:
    return (d.dataset.name, d.dataset.digest, tuple(sorted((t.key, t.value) for t in d.tags)))


def _push_datasets(server: Any, fb_run: Any, srv_run: Any, result: SyncResult) -> None:
    have = {_dataset_key(d) for d in (srv_run.inputs.dataset_inputs if srv_run.inputs else [])}
    missing = [d for d in (fb_run.inputs.dataset_inputs if fb_run.inputs else []) if _dataset_key(d) not in have]
    if missing:
        server.log_inputs(srv_run.info.run_id, datasets=missing)
    result.datasets += len(missing)


def _local_artifacts(run_dir: Path, fb_run: Any) -> Path:
    """The fallback run's artifact folder, also when the run folder was moved since (the store records absolute
    paths: the part after ``mlflow-fallback/`` is looked up in this run folder's)."""
    parsed = urlparse(fb_run.info.artifact_uri)
    recorded = Path(unquote(parsed.path))
    if parsed.scheme in ("file", "") and recorded.is_dir():
        return recorded
    parts = recorded.parts
    if FALLBACK_DIR in parts:
        last = len(parts) - 1 - parts[::-1].index(FALLBACK_DIR)
        return fallback_dir(run_dir).joinpath(*parts[last + 1 :])
    return recorded


def _server_files(server: Any, run_id: str, path: str | None = None) -> dict[str, int | None]:
    """Every file of a server run's artifacts: relative path → size (None when the store does not say)."""
    files: dict[str, int | None] = {}
    for info in server.list_artifacts(run_id, path):
        if info.is_dir:
            files.update(_server_files(server, run_id, info.path))
        else:
            files[info.path] = info.file_size
    return files


def _image_sets(paths: Any) -> dict[str, set[str]]:
    """Time-stepped images by ``images/<key>+step+<s>+timestamp+<ms>``: the ids that have both of their files."""
    parts: dict[tuple[str, str], set[str]] = collections.defaultdict(set)
    for p in paths:
        m = _IMAGE.match(p)
        if m:
            parts[(m.group(1), m.group(2))].add(m.group(3))
    complete: dict[str, set[str]] = collections.defaultdict(set)
    for (prefix, uid), kinds in parts.items():
        if len(kinds) == 2:
            complete[prefix].add(uid)
    return complete


def _push_artifacts(server: Any, run_dir: Path, fb_run: Any, run_id: str, result: SyncResult) -> None:
    root = _local_artifacts(run_dir, fb_run)
    if not root.is_dir():
        return
    local: dict[str, Path] = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = Path(folder) / name
            local[path.relative_to(root).as_posix()] = path
    have = _server_files(server, run_id)
    server_images = _image_sets(have)
    for rel, path in sorted(local.items()):
        m = _IMAGE.match(rel)
        if m:
            if server_images.get(m.group(1)):
                continue  # this image (key, step, timestamp) is on the server, under its own id
        elif rel in have and have[rel] in (None, path.stat().st_size):
            continue
        parent = rel.rsplit("/", 1)[0] if "/" in rel else None
        server.log_artifact(run_id, str(path), parent)
        result.artifacts += 1


def _update_run_file(run_dir: Path, uri: str, entry: dict[str, Any]) -> None:
    """A run folder that names its fallback run as its MLflow run (``mlflow_run.json``, written when the server was
    away at the start) names the server run from now on, so a rerun that reuses every stage reports it."""
    from pipeline.io.atomic import write_json
    from pipeline.tracking.mlflow_hook import RUN_FILE

    path = run_dir / RUN_FILE
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    if saved.get("run_id") == entry["fallback_run_id"] and saved.get("tracking_uri") == uri:
        write_json(path, {**saved, "run_id": entry["server_run_id"]})
