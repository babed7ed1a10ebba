"""Remote tracking that loses nothing: a local fallback store for when the MLflow tracking server is away.

:func:`open_tracker` is how a hook opens its tracker. A local store (``sqlite:``, ``file:``, a plain path) is opened
as it is. For a tracking server (``http://`` or ``https://``) it returns a :class:`ResilientTracker`:

- **a short connection check first**: ``GET {uri}/health`` with a 3 s timeout, so an unreachable server costs
  seconds, not MLflow's four minutes of HTTP retries;
- **fail-fast HTTP for MLflow's own calls**: MLflow reads ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` (default 7),
  ``MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR`` (2), ``MLFLOW_HTTP_REQUEST_BACKOFF_JITTER`` (1.0) and
  ``MLFLOW_HTTP_REQUEST_TIMEOUT`` (120 s) from the environment at every request
  (``mlflow.utils.rest_utils.http_request``). Those the user has not set are set for the process to
  :data:`FAIL_FAST_HTTP` (2 retries, backoff 1, jitter 0.5, 15 s per connect or read), so a server that goes away
  mid-run is given up on in about 3 s (connection refused) and at most about a minute (a host that stops
  answering). A variable that is already set is left alone (raise ``MLFLOW_HTTP_REQUEST_TIMEOUT`` for an artifact
  store that takes longer than 15 s to accept a large file);
- **every call is forwarded and recorded**: metrics (and anything else with a ``timestamp``) get their timestamp
  at call time, so a replay elsewhere logs identical values;
- **on the first failure of the server** (or at start, when the check fails or the run cannot be created) the
  run goes on in the fallback store ``RUN_DIR/mlflow-fallback/mlflow.db`` (artifacts in
  ``RUN_DIR/mlflow-fallback/mlartifacts``): the calls recorded so far are replayed there, the rest go there
  directly, and one warning names the folder and the command that pushes it to the server once it is back,
  ``pipeline tracking sync RUN_DIR`` (:mod:`pipeline.tracking.sync`). ``RUN_DIR/mlflow-fallback/pending.json``
  says which server, experiment, server run (when one was created) and fallback run belong together.

A call the server refuses because of the call itself (an invalid name, a parameter logged again with another
value, a file that does not exist) raises as it would without the fallback: the fallback would refuse it too.
"""

from __future__ import annotations

import contextlib
import datetime
import inspect
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from pipeline.tracking.tracker import Tracker

log = logging.getLogger("pipeline")

FALLBACK_DIR = "mlflow-fallback"
PENDING_FILE = "pending.json"
PENDING_FORMAT = 1
CHECK_TIMEOUT_S = 3.0
SYNC_COMMAND = "pipeline tracking sync"

#: What MLflow's HTTP client is given when the user has not set these variables (see the module docstring).
FAIL_FAST_HTTP: dict[str, str] = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "15",
}

# MLflow error codes that blame the call, not the server: the fallback store would refuse the call as well.
_CALL_ERRORS = frozenset({
    "INVALID_PARAMETER_VALUE", "BAD_REQUEST", "MALFORMED_REQUEST", "RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS",
    "INVALID_STATE", "INVALID_STATE_TRANSITION",
})


def is_remote(uri: str) -> bool:
    """Whether ``uri`` is a tracking server (``http://`` or ``https://``), i.e. can be away."""
    return uri.strip().lower().startswith(("http://", "https://"))


def fallback_dir(run_dir: Path) -> Path:
    """The run folder's fallback store folder, ``RUN_DIR/mlflow-fallback``."""
    return Path(run_dir).resolve() / FALLBACK_DIR


def fallback_uri(run_dir: Path) -> str:
    """The fallback store of a run folder: ``sqlite:///RUN_DIR/mlflow-fallback/mlflow.db`` (artifacts beside it
    in ``mlartifacts/``, see :func:`pipeline.tracking.tracker.experiment_id`)."""
    return f"sqlite:///{fallback_dir(run_dir) / 'mlflow.db'}"


def fail_fast_http() -> dict[str, str]:
    """Set the :data:`FAIL_FAST_HTTP` variables the user has not set; returns those it set."""
    set_now = {k: v for k, v in FAIL_FAST_HTTP.items() if k not in os.environ}
    os.environ.update(set_now)
    return set_now


def check_server(uri: str, timeout: float = CHECK_TIMEOUT_S) -> str | None:
    """``None`` when the tracking server at ``uri`` answers ``GET /health`` within ``timeout`` seconds, else why
    not. Any answer below 500 counts (a server behind a login still answers); TLS settings are MLflow's
    (``MLFLOW_TRACKING_INSECURE_TLS``, ``MLFLOW_TRACKING_SERVER_CERT_PATH``)."""
    import requests

    verify: bool | str = True
    if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() in ("1", "true"):
        verify = False
    elif os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH"):
        verify = os.environ["MLFLOW_TRACKING_SERVER_CERT_PATH"]
    try:
        resp = requests.get(uri.rstrip("/") + "/health", timeout=timeout, verify=verify)
    except requests.RequestException as exc:
        return _short(exc)
    if resp.status_code >= 500:
        return f"GET /health answered HTTP {resp.status_code}"
    return None


def _short(exc: BaseException) -> str:
    """An exception as one line: its type and the innermost reason (``[Errno 111] Connection refused``, ``Read
    timed out``) rather than the layers requests and MLflow wrap around it."""
    text = " ".join(str(exc).split())
    m = (re.search(r"\[Errno -?\d+\] [^\"'()]+", text)
         or re.search(r"(?:Read|Connection to \S+) timed out\. \([a-z]+ timeout=[\d.]+\)", text))
    reason = m.group(0).strip() if m else text
    if len(reason) > 300:
        reason = reason[:300] + "..."
    return f"{type(exc).__name__}: {reason}" if reason else type(exc).__name__


def server_trouble(exc: BaseException) -> bool:
    """Whether a failed call is the server's trouble (away, timing out, erring, refusing us) rather than the call's
    own (bad input, which a fallback store would refuse too)."""
    import requests
    from mlflow.exceptions import MlflowException

    if isinstance(exc, MlflowException):
        return str(getattr(exc, "error_code", "")) not in _CALL_ERRORS
    return isinstance(exc, (requests.RequestException, ConnectionError, TimeoutError))


def read_pending(run_dir: Path) -> dict[str, Any]:
    """``RUN_DIR/mlflow-fallback/pending.json`` (``{"format": 1, "runs": []}`` when there is none yet)."""
    import json

    path = fallback_dir(run_dir) / PENDING_FILE
    if not path.is_file():
        return {"format": PENDING_FORMAT, "runs": []}
    doc = json.loads(path.read_text())
    doc.setdefault("runs", [])
    return doc


def write_pending(run_dir: Path, doc: Mapping[str, Any]) -> None:
    """Write ``pending.json`` atomically (an interrupted write leaves the previous version)."""
    from pipeline.io.atomic import write_json

    write_json(fallback_dir(run_dir) / PENDING_FILE, dict(doc))


_quiet = threading.local()


class _QuietRetries(logging.Filter):
    """Drops urllib3's "Retrying (...) after connection broken" warnings of the server's calls (made in a thread
    inside :func:`_retries_quiet`): a retry that works needs no word, and one that does not ends in the fallback's
    own warning."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (getattr(_quiet, "on", False) and str(record.msg).startswith("Retrying"))


_QUIET_RETRIES = _QuietRetries()


@contextlib.contextmanager
def _retries_quiet() -> Iterator[None]:
    logger = logging.getLogger("urllib3.connectionpool")
    if _QUIET_RETRIES not in logger.filters:
        logger.addFilter(_QUIET_RETRIES)
    before = getattr(_quiet, "on", False)
    _quiet.on = True
    try:
        yield
    finally:
        _quiet.on = before


def _now_ms() -> int:
    return int(time.time() * 1000)


def _now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def _interface() -> dict[str, inspect.Signature]:
    """The tracker interface: every public method of :class:`Tracker`, by name."""
    return {name: inspect.signature(fn) for name, fn in inspect.getmembers(Tracker, inspect.isfunction)
            if not name.startswith("_")}


class ResilientTracker(Tracker):
    """A tracker on a tracking server that goes on in a local fallback store when the server is away.

    Thread-safe: calls (from the hook and from the system-metrics thread) are applied one at a time, in order.
    Every method of :class:`Tracker` is forwarded (the methods are generated from the interface, so a method
    added there is forwarded too) and recorded until the fallback is opened; metrics (any method with a
    ``timestamp`` parameter) are given their timestamp at call time.

    Args:
        server_uri: the tracking server.
        factory: creates the run on a store URI (the server's, or the fallback's).
        run_dir: where the fallback store goes (``RUN_DIR/mlflow-fallback``).
        primary: the run on the server, or None when it could not be opened (then ``reason`` says why and the
            fallback is opened at once).
    """

    def __init__(self, server_uri: str, factory: Callable[[str], Tracker], run_dir: Path,
                 primary: Tracker | None, reason: str | None = None) -> None:
        self.server_uri = server_uri
        self.run_dir = Path(run_dir).resolve()
        self._factory = factory
        self._primary = primary
        self._fallback: Tracker | None = None
        self._calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        self._lock = threading.RLock()
        self.fallback_reason: str | None = None
        if primary is None:
            self._open_fallback(reason or "the server could not be reached")

    @property
    def run_id(self) -> str | None:  # type: ignore[override]
        """The server's run id when the run was created there, else the fallback's."""
        if self._primary is not None and self._primary.run_id:
            return self._primary.run_id
        return self._fallback.run_id if self._fallback is not None else None

    @property
    def server_run_id(self) -> str | None:
        """The run's id on the server, None when it was never created there."""
        return self._primary.run_id if self._primary is not None else None

    @property
    def fallback_run_id(self) -> str | None:
        """The run's id in the fallback store, None while the server is in use."""
        return self._fallback.run_id if self._fallback is not None else None

    @property
    def on_fallback(self) -> bool:
        """Whether the run is being recorded in the local fallback store."""
        return self._fallback is not None

    def _call(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        args = tuple(dict(a) if isinstance(a, Mapping) else a for a in args)  # the caller may reuse its dicts
        kwargs = {k: dict(v) if isinstance(v, Mapping) else v for k, v in kwargs.items()}
        with self._lock:
            if self._fallback is not None:
                return getattr(self._fallback, name)(*args, **kwargs)
            assert self._primary is not None
            self._calls.append((name, args, kwargs))
            try:
                with _retries_quiet():
                    return getattr(self._primary, name)(*args, **kwargs)
            except Exception as exc:
                if not server_trouble(exc):
                    self._calls.pop()  # not applied there, and a replay would fail the same way
                    raise
                self._open_fallback(f"{name} failed: {_short(exc)}")
                return None

    def _open_fallback(self, reason: str) -> None:
        """Open the fallback store, say so once, note it in ``pending.json`` and replay the recorded calls."""
        from mlflow.tracking import MlflowClient

        uri = fallback_uri(self.run_dir)
        folder = fallback_dir(self.run_dir)
        try:
            fallback = self._factory(uri)
            client = MlflowClient(tracking_uri=uri)
            experiment = client.get_experiment(client.get_run(str(fallback.run_id)).info.experiment_id).name
            doc = read_pending(self.run_dir)
            doc["runs"].append({
                "server_uri": self.server_uri, "experiment": experiment, "server_run_id": self.server_run_id,
                "fallback_run_id": fallback.run_id, "since": _now_iso(), "reason": reason, "synced_at": None,
            })
            write_pending(self.run_dir, doc)
        except Exception as exc:
            raise RuntimeError(f"MLflow server {self.server_uri} is unreachable ({reason}) and the local fallback "
                               f"store {folder} could not be opened ({_short(exc)})") from exc
        self._fallback = fallback
        self.fallback_reason = reason
        log.warning("MLflow server %s is unreachable (%s): the run goes on and is recorded in the local fallback "
                    "store %s; when the server is back, push it there with: %s %s", self.server_uri, reason, folder,
                    SYNC_COMMAND, self.run_dir)
        calls, self._calls = self._calls, []
        failed: list[str] = []
        for name, args, kwargs in calls:
            try:
                getattr(fallback, name)(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 (one call that cannot be replayed does not stop the others)
                failed.append(f"{name}: {_short(exc)}")
        if failed:
            log.warning("%d call(s) could not be replayed in the fallback store (first: %s)", len(failed), failed[0])


def _forwarder(name: str, sig: inspect.Signature) -> Callable[..., Any]:
    """A :class:`ResilientTracker` method that forwards ``Tracker.<name>`` (filling ``timestamp`` when it has one)."""
    fills_timestamp = "timestamp" in sig.parameters

    def method(self: ResilientTracker, *args: Any, **kwargs: Any) -> Any:
        if fills_timestamp:
            bound = sig.bind(self, *args, **kwargs)
            if bound.arguments.get("timestamp") is None:
                bound.arguments["timestamp"] = _now_ms()
            args, kwargs = bound.args[1:], dict(bound.kwargs)
        return self._call(name, args, kwargs)

    method.__name__ = method.__qualname__ = name
    method.__doc__ = f"Forwards :meth:`Tracker.{name}` to the server, or to the fallback store once it is away."
    method.__signature__ = sig  # type: ignore[attr-defined]
    return method


for _name, _sig in _interface().items():
    setattr(ResilientTracker, _name, _forwarder(_name, _sig))


def open_tracker(tracking_uri: str, factory: Callable[[str], Tracker], run_dir: Path) -> Tracker:
    """The tracker of a run on ``tracking_uri``.

    Args:
        tracking_uri: the store; only a tracking server (``http(s)://``) gets a fallback.
        factory: creates the run on a store URI (called with ``tracking_uri``, and with the fallback store's URI
            if the server is away).
        run_dir: the run folder (``pipeline infer``: the output folder); the fallback store goes in
            ``RUN_DIR/mlflow-fallback``.

    Returns:
        ``factory(tracking_uri)`` for a local store; a :class:`ResilientTracker` for a server.

    Raises:
        Exception: the local store could not be opened, or neither the server nor the fallback store could.
    """
    if not is_remote(tracking_uri):
        return factory(tracking_uri)
    fail_fast_http()
    reason = check_server(tracking_uri)
    primary: Tracker | None = None
    if reason is None:
        try:
            with _retries_quiet():
                primary = factory(tracking_uri)
        except Exception as exc:
            if not server_trouble(exc):
                raise
            reason = f"the run could not be created: {_short(exc)}"
    return ResilientTracker(tracking_uri, factory, run_dir, primary, reason)
