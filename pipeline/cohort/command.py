"""The ``pipeline infer`` command: segment a cohort of scans with a model bundle (:func:`infer_command`, what
:mod:`pipeline.cli` runs for it).

Imported by the command line only when the command runs: its imports (the bundle, torch, MLflow) stay inside the
function.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.cli import EXIT_CASES_FAILED


def infer_command(args: argparse.Namespace) -> int:
    """Run ``pipeline infer`` with its parsed arguments: load the model (a folder or from MLflow), segment the
    cohort, track the batch in MLflow (unless ``--no-mlflow``) and print a summary.

    Returns:
        0, or :data:`~pipeline.cli.EXIT_CASES_FAILED` when some cases failed (the others were written).
    """
    if not args.no_mlflow:
        from pipeline.tracking.process import prewarm

        prewarm()  # MLflow's imports in the tracking process while PyTorch and the model load here
    import signal
    import tempfile
    import time

    from pipeline.bundle import load_bundle, resolve_model
    from pipeline.cohort import InferOptions, infer_cohort
    from pipeline.cohort.inputs import collect_inputs
    from pipeline.cohort.report import count_statuses
    from pipeline.engine.hooks import HookSet
    from pipeline.io.atomic import check_folder
    from pipeline.tracking.inference import batch_ended, batch_started, inference_experiment
    from pipeline.tracking.mlflow_hook import make_mlflow_hook
    from pipeline.tracking.tracker import resolve_tracking_uri

    def terminate(signum: int, frame: object) -> None:  # a kill (SIGTERM) cleans up like Ctrl-C
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    inputs = collect_inputs(args.input)
    check_folder(Path(args.output), "--output folder")  # a file, a dangling symlink, a loop: before the model loads
    options = InferOptions(output=Path(args.output), suffix=args.suffix, probabilities=args.save_probabilities,
                           crf=args.crf, overwrite=args.overwrite, device=args.device, prefetch=args.prefetch,
                           nan_policy=args.nan_policy, max_voxels=args.max_voxels, precision=args.precision,
                           compile=args.compile)
    uri = resolve_tracking_uri(args.tracking_uri)
    with tempfile.TemporaryDirectory(prefix="pipeline-model.") as cache:
        bundle = load_bundle(resolve_model(args.model, uri, Path(cache)))
        experiment = args.experiment or inference_experiment(bundle.name)
        mlflow = None if args.no_mlflow else make_mlflow_hook(experiment, uri, process=True, system_metrics=10.0)
        hooks = HookSet([mlflow] if mlflow else [])
        hooks.run_started(batch_started(bundle, args.model, len(inputs), options, args.executor))
        t0 = time.perf_counter()
        try:
            rows = infer_cohort(bundle, inputs, options, executor=args.executor, ray_address=args.ray_address,
                                ray_workers=args.ray_workers, progress=not args.quiet)
        except BaseException as exc:  # the run says how it ended; report.json holds the cases finished so far
            interrupted = isinstance(exc, KeyboardInterrupt)
            hooks.run_ended(batch_ended([], time.perf_counter() - t0, options.output,
                                        status="KILLED" if interrupted else "FAILED",
                                        error=None if interrupted else str(exc)))
            raise
        hooks.run_ended(batch_ended(rows, time.perf_counter() - t0, options.output))
        if mlflow is not None and mlflow.run_id and not hooks.failed:
            print(f"tracked in MLflow ({uri}): experiment {experiment}, run {mlflow.run_id}")
    counts = count_statuses(rows)
    print(f"{counts['written']} written, {counts['skipped']} skipped (already done), {counts['failed']} failed; "
          f"report: {options.output / 'report.csv'}")
    filled = [r for r in rows if r.filled_voxels]
    if filled:
        print(f"filled {sum(r.filled_voxels for r in filled)} NaN or infinite voxel(s) with the scan's minimum in "
              f"{len(filled)} case(s) (column filled_voxels)")
    for r in rows:
        if r.status == "failed":
            print(f"  failed: {r.input}: {r.error}", file=sys.stderr)
    return EXIT_CASES_FAILED if counts["failed"] else 0
