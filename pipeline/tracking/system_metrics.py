"""System metrics while a run works: CPU, memory, disk, and the GPU when there is one.

MLflow's own collectors (``mlflow.system_metrics.metrics``: psutil for CPU, memory and disk; pynvml or pyrsmi for
NVIDIA or AMD GPUs) take the samples. The samples are logged through the run's tracker rather than by MLflow's
``SystemMetricsMonitor``, which polls the store for the run's status every interval and talks to the store
directly: through the tracker they go wherever the run's other metrics go (the local fallback store when a
tracking server is away) and one process can follow several runs. The names are MLflow's (``system/...``), so
the UI shows them on the run's "System metrics" tab.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

log = logging.getLogger("pipeline")

PREFIX = "system/"


def _collectors() -> list[Any]:
    from mlflow.system_metrics.metrics.cpu_monitor import CPUMonitor
    from mlflow.system_metrics.metrics.disk_monitor import DiskMonitor

    collectors: list[Any] = [CPUMonitor(), DiskMonitor()]
    for module, name in (("gpu_monitor", "GPUMonitor"), ("rocm_monitor", "ROCMMonitor")):
        try:
            cls = getattr(__import__(f"mlflow.system_metrics.metrics.{module}", fromlist=[name]), name)
            collectors.append(cls())  # raises without the GPU library or without a GPU
            break
        except Exception:
            continue
    return collectors


class SystemMetricsSampler:
    """Samples every ``interval`` seconds in a daemon thread and logs the mean of each sample as step 0, 1, ...

    Args:
        tracker: has ``log_metrics(values, step=...)`` (:class:`pipeline.tracking.tracker.Tracker`).
        interval: seconds between samples (MLflow's default is 10).
    """

    def __init__(self, tracker: Any, interval: float = 10.0) -> None:
        self.tracker = tracker
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.step = 0

    def start(self) -> None:
        try:
            self._collectors = _collectors()
            for c in self._collectors:  # CPU load is measured since the previous call: start the clock now
                c.collect_metrics()
                c.clear_metrics()
        except Exception as exc:  # psutil missing or broken: the run goes on without system metrics
            log.warning("system metrics are not recorded (%s)", exc)
            return
        self._thread = threading.Thread(target=self._loop, name="pipeline-system-metrics", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            if not self.sample():
                return

    def sample(self) -> bool:
        """Take one sample and log it; False (and no more samples) once logging fails."""
        values: dict[str, float] = {}
        try:
            for c in self._collectors:
                c.collect_metrics()
                values.update({PREFIX + k: float(v) for k, v in c.aggregate_metrics().items()})
                c.clear_metrics()
            self.tracker.log_metrics(values, step=self.step)
        except Exception as exc:
            log.warning("system metrics stopped (%s)", exc)
            return False
        self.step += 1
        return True

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
