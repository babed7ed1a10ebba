"""MLflow tracking for ``pipeline infer``: one MLflow run per batch, in the experiment ``<model name>-inference``.

The run records which model (bundle digest, where it came from, the training run folder), the options that change
outputs, how many cases were written, skipped and failed, the throughput, and the batch's ``report.json`` /
``report.csv`` as artifacts. Training runs keep their own experiment (``pipeline compare --experiment NAME`` stays a
table of trained models). The run ends ``FAILED`` when a case failed (the command's exit code is 1 then) and
``KILLED`` on Ctrl-C or a kill.

A store that cannot be reached fails the command before any scan is read, with one message; a failure while
logging the results afterwards only warns, since the segmentations are written by then.
"""

from __future__ import annotations

import contextlib
import logging
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError
from pipeline.inference.cohort import count_statuses
from pipeline.tracking.tracker import MlflowTracker

log = logging.getLogger("pipeline")


def inference_experiment(model_name: str) -> str:
    """The default experiment of a model's inference runs."""
    return f"{model_name}-inference"


def start_inference_run(bundle: Any, model_ref: str, n_inputs: int, options: Any, executor: str,
                        tracking_uri: str, experiment: str | None = None) -> MlflowTracker:
    """Open the MLflow run of one ``pipeline infer`` batch and log what it will do.

    Raises:
        PipelineError: the store cannot be opened or written.
    """
    name = experiment or inference_experiment(bundle.name)
    source = bundle.meta.get("source", {})
    tags = {"kind": "inference", "model": model_ref, "model_digest": bundle.digest,
            "output": str(Path(options.output).resolve())}
    if source.get("run_dir"):
        tags["training_run_dir"] = str(source["run_dir"])
    tracker: MlflowTracker | None = None
    try:
        tracker = MlflowTracker(name, tracking_uri, run_name=f"infer-{bundle.name}", tags=tags)
        tracker.log_params({
            "model": model_ref, "model_name": bundle.name, "model_digest": bundle.digest, "inputs": n_inputs,
            "executor": executor, "device": options.device, "suffix": options.suffix,
            "save_probabilities": options.probabilities, "crf": options.crf, "overwrite": options.overwrite,
            **{f"infer.{k}": v for k, v in bundle.infer.model_dump().items()},
        })
    except Exception as exc:
        if tracker is not None:  # created but not usable: do not leave it RUNNING
            with contextlib.suppress(Exception):
                tracker.end("FAILED")
        raise PipelineError(f"could not start an MLflow run in {tracking_uri} ({exc}); pass --tracking-uri URI for "
                            "another store, or --no-mlflow to run untracked") from None
    return tracker


def finish_inference_run(tracker: MlflowTracker, rows: Sequence[Any], seconds: float, output: Path,
                         status: str | None = None, error: str | None = None) -> None:
    """Log the batch's counts, throughput and report, and end the run (warns instead of raising).

    ``status`` is given when the batch did not run to its end (``KILLED``: Ctrl-C or a kill; ``FAILED``: an
    error, whose message ``error`` becomes a tag): then only the time and the report so far are logged. Otherwise
    the run ends ``FAILED`` if a case failed.
    """
    metrics = {"seconds": seconds}
    if status is None:
        counts = count_statuses(rows)
        metrics.update({f"cases_{s}": float(n) for s, n in counts.items()})
        done = [r.seconds for r in rows if r.status == "written"]
        if done and seconds > 0:
            metrics["cases_per_second"] = counts["written"] / seconds
            metrics["seconds_per_case_median"] = statistics.median(done)
        status = "FAILED" if counts["failed"] else "FINISHED"
    try:
        if error:
            tracker.set_tags({"error": error[:5000]})
        tracker.log_metrics(metrics)
        for report in ("report.json", "report.csv"):
            if (output / report).is_file():
                tracker.log_artifact(output / report)
        tracker.end(status)
    except Exception as exc:  # the outputs are written: do not turn a finished batch into an error
        log.warning("the segmentations are written, but logging the batch to MLflow failed: %s", exc)
