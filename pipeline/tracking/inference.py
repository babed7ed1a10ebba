"""What ``pipeline infer`` tells its hooks: one MLflow run per batch, in the experiment ``<model name>-inference``.

The run records which model (bundle digest, where it came from, the training run folder), the options that change
outputs, how many cases were written, skipped and failed, the throughput, the NaN or infinite voxels filled
(``--nan-policy fill``: ``filled_voxels`` in all and ``filled_voxels.<case>`` per case that had any), and the
batch's ``report.json`` / ``report.csv`` as artifacts. Training runs keep their own experiment (``pipeline compare
--experiment NAME`` stays a table of trained models). The run ends ``FAILED`` when a case failed (the command's
exit code is 1 then) and ``KILLED`` on Ctrl-C or a kill.

The batch goes through the same hook as ``pipeline run`` (:class:`pipeline.tracking.mlflow_hook.MlflowHook`): a
store that cannot be reached, or that fails while the batch runs, is reported once and the segmentations go on.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.cohort.report import count_statuses
from pipeline.engine.hooks import Report, RunEnded, RunStarted


def inference_experiment(model_name: str) -> str:
    """The default experiment of a model's inference runs."""
    return f"{model_name}-inference"


def batch_started(bundle: Any, model_ref: str, n_inputs: int, options: Any, executor: str) -> RunStarted:
    """The run-started event of one ``pipeline infer`` batch: the model and the options."""
    source = bundle.meta.get("source", {})
    output = Path(options.output).resolve()
    tags = {"kind": "inference", "model": model_ref, "model_digest": bundle.digest, "output": str(output)}
    if source.get("run_dir"):
        tags["training_run_dir"] = str(source["run_dir"])
    params = {
        "model": model_ref, "model_name": bundle.name, "model_digest": bundle.digest, "inputs": n_inputs,
        "executor": executor, "device": options.device, "suffix": options.suffix,
        "save_probabilities": options.probabilities, "crf": options.crf, "overwrite": options.overwrite,
        "nan_policy": options.nan_policy or bundle.preprocess.nan_policy,
        **{f"infer.{k}": v for k, v in options.infer_config(bundle).model_dump().items()},
    }
    from pipeline.runtime.precision import precision_here

    precision = precision_here(params["infer.precision"], options.device)
    if precision is not None:
        params["precision"] = tags["precision"] = precision
    return RunStarted(f"infer-{bundle.name}", output, Report(params=params, tags=tags))


def batch_ended(rows: Sequence[Any], seconds: float, output: Path, status: str | None = None,
                error: str | None = None) -> RunEnded:
    """The run-ended event of a batch: counts, throughput and the report files.

    ``status`` is given when the batch did not run to its end (``KILLED``: Ctrl-C or a kill; ``FAILED``: an
    error, whose message ``error`` is kept): then only the time and the report so far are logged. Otherwise the
    run ends ``FAILED`` if a case failed.
    """
    metrics = {"seconds": seconds}
    if status is None:
        counts = count_statuses(rows)
        metrics.update({f"cases_{s}": float(n) for s, n in counts.items()})
        filled = [r for r in rows if getattr(r, "filled_voxels", 0)]
        metrics["filled_voxels"] = float(sum(r.filled_voxels for r in filled))
        metrics.update({f"filled_voxels.{r.case}": float(r.filled_voxels) for r in filled})
        done = [r.seconds for r in rows if r.status == "written"]
        if done and seconds > 0:
            metrics["cases_per_second"] = counts["written"] / seconds
            metrics["seconds_per_case_median"] = statistics.median(done)
        status = "FAILED" if counts["failed"] else "FINISHED"
    warm_up = _report_value(output, "compile_warm_up_seconds")
    if isinstance(warm_up, (int, float)):
        metrics["compile_warm_up_seconds"] = float(warm_up)
    artifacts = tuple((output / f, None) for f in ("report.json", "report.csv") if (output / f).is_file())
    return RunEnded(status, Report(metrics=metrics, artifacts=artifacts), error=error)


def _report_value(output: Path, key: str) -> Any:
    """One top-level value of the batch's ``report.json`` (None when the report or the key is missing)."""
    import json

    try:
        doc = json.loads((output / "report.json").read_text())
    except (OSError, ValueError):
        return None
    return doc.get(key) if isinstance(doc, dict) else None
