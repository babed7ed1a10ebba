"""The ``pipeline`` command line.

A user's mistake (a :class:`~pipeline.errors.PipelineError`) is printed as one message with exit code 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.errors import PipelineError

if TYPE_CHECKING:
    from pipeline.config.loader import LoadedWorkflow
    from pipeline.config.schema import Workflow

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
EXIT_CASES_FAILED = 1  # `pipeline infer`: some cases failed, the others were written


def _cmd_validate(args: argparse.Namespace) -> int:
    from pipeline.config.loader import load_workflow

    loaded = load_workflow(args.workflow, args.set)
    print(f"{loaded.source}: OK (workflow '{loaded.workflow.name}')")
    return 0


def _start_tracking(workflow: Workflow) -> None:
    """The workflow tracks: start the tracking process now, while PyTorch is imported here."""
    if workflow.tracking.enabled:
        from pipeline.tracking.process import prewarm

        prewarm()


def _cmd_run(args: argparse.Namespace) -> int:
    import os

    from pipeline.config.loader import load_workflow
    from pipeline.training.launch import launch

    code = launch(args) if args.nproc is not None else None
    if code is not None:
        return code
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1  # one of torchrun's processes
    if launched and args.only:
        raise PipelineError("--only cannot run under torchrun (only the train stage runs in several processes); "
                            "run it in one process, or use --from STAGE")
    main_rank = int(os.environ.get("RANK", "0")) == 0
    loaded = load_workflow(args.workflow, args.set, on_sections=_start_tracking if main_rank else None)
    if not launched:
        return _run_here(args, loaded)
    from pipeline.training import distributed

    distributed.init(loaded.workflow.train.device)
    try:
        if not main_rank:  # trains with rank 0 and exits: no other stage, no MLflow
            from pipeline.stages import default_run_dir
            from pipeline.training.stage import train_with_rank0

            return train_with_rank0(loaded.workflow, Path(args.run_dir).resolve() if args.run_dir
                                    else default_run_dir(loaded))
        try:
            return _run_here(args, loaded)
        finally:
            distributed.announce(distributed.ABORTED)  # stopped before the train stage: the others stop waiting
    finally:
        distributed.shutdown()


def _run_here(args: argparse.Namespace, loaded: LoadedWorkflow) -> int:
    from pipeline.stages import run_workflow

    result = run_workflow(
        loaded, run_dir=Path(args.run_dir) if args.run_dir else None, from_stage=args.from_stage, only=args.only,
        force=args.force, tracking_process=True,
    )
    if result.summary:
        s = result.summary
        extra = ", ".join(f"{k}={s[k]:.4g}" for k in ("hd95_mean", "asd_mean") if isinstance(s.get(k), float))
        print(f"test dice_mean={s['dice_mean']:.4f}" + (f", {extra}" if extra else ""))
    print(f"ran: {', '.join(result.executed) or '-'}; reused: {', '.join(result.reused) or '-'}")
    if result.mlflow_run_id:
        print(f"MLflow run: {result.mlflow_run_id}")
    print(f"run directory: {result.run_dir}")
    return 0


def _cmd_fetch(args: argparse.Namespace) -> int:
    from pipeline.data.fetchers import FETCHERS

    fetcher = FETCHERS.get(args.dataset)
    md5 = {"md5": args.md5} if args.md5 else {}  # without --md5, the fetcher's default (the official release's)
    manifest = fetcher.fetch(Path(args.root), archive=Path(args.archive) if args.archive else None,
                             progress=not args.quiet, **md5)
    print(f"manifest written: {manifest}")
    print(f"run the workflow on it with: pipeline run {fetcher.workflow} --set data.manifest={manifest}")
    return 0


def _cmd_crf(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from pipeline.config.schema import CRFConfig
    from pipeline.io.scan import write_like
    from pipeline.postprocess.apply_crf import load_crf_inputs, run_crf
    from pipeline.postprocess.crf.params import flag_options

    try:
        cfg = CRFConfig(**{name: getattr(args, name) for name in flag_options()})
    except ValidationError as exc:  # one line per flag: "--smooth-sigma-mm: Input should be greater than 0, got 0.0"
        problems = [f"--{str(e['loc'][0]).replace('_', '-')}: {e['msg'].removeprefix('Value error, ')}, "
                    f"got {e.get('input')!r}" for e in exc.errors() if e.get("loc")]
        raise PipelineError("invalid CRF option(s): " + "; ".join(problems or [str(exc.errors()[0]["msg"])])) from None
    probs, image, spacing, _ = load_crf_inputs(Path(args.probs), Path(args.image), args.num_classes)
    labels = run_crf(probs, image, spacing, cfg)
    write_like(args.image, labels.astype("uint8"), args.out)
    print(f"labels written: {args.out}")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from pipeline.evaluation.compare import rows_from_experiment, rows_from_run_dirs, to_csv, to_markdown
    from pipeline.io.atomic import write_text
    from pipeline.tracking.tracker import resolve_tracking_uri

    if bool(args.runs) == bool(args.experiment):
        raise PipelineError("compare: give run folders or --experiment NAME (not both)")
    rows = (rows_from_experiment(args.experiment, resolve_tracking_uri(args.tracking_uri)) if args.experiment
            else rows_from_run_dirs([Path(r) for r in args.runs]))
    if not rows:
        raise PipelineError("compare: no finished runs found")
    table = to_markdown(rows, args.metrics)
    print(table, end="")
    if args.markdown:
        write_text(args.markdown, table)
    if args.csv:
        write_text(args.csv, to_csv(rows, args.metrics))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from pipeline.bundle import export_bundle, log_bundle_to_mlflow
    from pipeline.tracking.tracker import resolve_tracking_uri

    out = export_bundle(Path(args.run_dir), Path(args.out), name=args.name, overwrite=args.overwrite)
    print(f"model bundle written: {out}")
    if not args.no_mlflow:
        import json

        meta = json.loads((out / "bundle.json").read_text())
        uri = resolve_tracking_uri(args.tracking_uri or meta["source"].get("tracking_uri"))  # where training logged
        uris = log_bundle_to_mlflow(out, uri, register_as=args.name or meta["name"])
        print(f"logged to MLflow: {uris['runs_uri']}" + (f" and {uris['model_uri']}" if "model_uri" in uris else ""))
    print(f"run it with: pipeline infer {out} --input SCANS... --output DIR")
    return 0


def _cmd_infer(args: argparse.Namespace) -> int:
    from pipeline.cohort.command import infer_command

    return infer_command(args)


def _cmd_ui(args: argparse.Namespace) -> int:
    from pipeline.tracking.tracker import resolve_tracking_uri
    from pipeline.tracking.ui import serve_ui

    uri = args.tracking_uri
    if uri is None and args.workflow:
        from pipeline.config.loader import load_workflow

        uri = load_workflow(args.workflow, []).workflow.tracking.tracking_uri
    return serve_ui(resolve_tracking_uri(uri), host=args.host, port=args.port)


def _cmd_tracking_sync(args: argparse.Namespace) -> int:
    from pipeline.tracking.sync import sync_run

    result = sync_run(Path(args.run_dir), tracking_uri=args.tracking_uri)
    print(result.describe())
    return 0


def _cmd_import(args: argparse.Namespace) -> int:
    from pipeline.data.importers import import_dataset

    manifest = import_dataset(args.dataset, Path(args.src), Path(args.out))
    print(f"manifest written: {manifest}")
    print(f"use it with: pipeline run WORKFLOW --set data.manifest={manifest}")
    return 0


def _voxel_count(text: str) -> int:
    """``--max-voxels``: a positive whole number."""
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number of voxels (e.g. 536870912), not {text!r}")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pipeline", description="Medical image segmentation workflows.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    def add_set(p: argparse.ArgumentParser) -> None:
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a workflow value, e.g. --set train.epochs=2 (repeatable)")

    p = sub.add_parser("validate", help="check a workflow file without running it")
    p.add_argument("workflow")
    add_set(p)
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("run", help="run a workflow (unchanged stages are reused)")
    p.add_argument("workflow")
    add_set(p)
    p.add_argument("--run-dir", help="run folder (default runs/<workflow>/<hash of the training config>)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--from", dest="from_stage", metavar="STAGE", help="re-run STAGE and every later stage")
    g.add_argument("--only", metavar="STAGE", help="re-run just STAGE (earlier stages must be finished)")
    p.add_argument("--force", action="store_true", help="re-run every stage")
    p.add_argument("--nproc", type=int, metavar="N",
                   help="train in N processes on this machine (PyTorch's torchrun; one per GPU, or N CPU processes): "
                   "train.batch_size is per process; several machines: torchrun ... -m pipeline run WORKFLOW")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("crf", help="dense CRF on saved class probabilities (x, y, z, class)")
    p.add_argument("--probs", required=True, help="NIfTI of class probabilities, class axis last")
    p.add_argument("--image", required=True, help="the scan the probabilities belong to (same grid)")
    p.add_argument("--out", required=True, help="label map to write (keeps the image's geometry)")
    from pipeline.postprocess.crf.params import flag_options as crf_flag_options

    for name, options in crf_flag_options().items():  # one flag per CRFConfig field (but tune)
        p.add_argument(f"--{name.replace('_', '-')}", **options)
    p.add_argument("--num-classes", type=int, help="the model's class count; a different count is an error")
    p.set_defaults(func=_cmd_crf)

    p = sub.add_parser("export", help="write a finished run's model as a self-contained bundle (and log it to MLflow)")
    p.add_argument("run_dir", help="the run folder `pipeline run` printed")
    p.add_argument("--out", required=True, help="bundle folder to create")
    p.add_argument("--name", help="model name (default: the workflow's name); also the MLflow registered model")
    p.add_argument("--overwrite", action="store_true", help="replace an existing bundle folder")
    p.add_argument("--no-mlflow", action="store_true", help="do not log or register the bundle in MLflow")
    p.add_argument("--tracking-uri", help="MLflow store (default $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("infer", help="segment a cohort of scans with a model bundle")
    p.add_argument("model", help="bundle folder, models:/NAME/VERSION or runs:/RUN_ID/model")
    p.add_argument("--input", nargs="+", required=True, metavar="PATH",
                   help="scans (.nii, .nii.gz, .mha, .mhd, .nrrd), folders, DICOM series folders, globs or a "
                        "manifest .json")
    p.add_argument("--output", required=True, help="output folder (outputs keep each input's name and format)")
    p.add_argument("--suffix", default="", help="added to each output's name, e.g. _seg")
    p.add_argument("--save-probabilities", action="store_true",
                   help="also write NAME_probs.nii.gz: class probabilities, class axis last (x, y, z, class)")
    p.add_argument("--crf", action="store_true", help="dense CRF postprocessing (the bundle's settings)")
    p.add_argument("--overwrite", action="store_true", help="redo cases already done with this model and options")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--prefetch", type=int, default=2, help="cases read and preprocessed ahead (threads)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default=None,
                   help="arithmetic of the network: auto = bf16 where the CPU (amx_bf16/avx512_bf16 flags) or GPU "
                   "multiplies it in hardware, else fp32 (default: the bundle's infer.precision, auto); the choice is "
                   "printed and in report.json")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the network before the first case (a warm-up of a minute or more, reported "
                   "apart; worth it only on long cohorts where it is faster: see the README; default: the bundle's "
                   "infer.compile)")
    p.add_argument("--max-voxels", type=_voxel_count, default=2**28, metavar="N",
                   help="largest scan read, in voxels times channels (default 2**28 = 268435456, 1 GiB as float32): "
                   "a header declaring more is refused before anything is decompressed; raise it for larger scans")
    p.add_argument("--nan-policy", choices=["refuse", "fill"], default=None,
                   help="scans with NaN or infinite voxels (registration tools write NaN outside the field of view): "
                   "refuse them, or fill those voxels with the scan's smallest finite value (per channel) and "
                   "record how many in the report (filled_voxels) and MLflow; a scan with no finite voxel is "
                   "refused either way (default: the bundle's preprocess.nan_policy, the one it was trained with; "
                   "refuse for bundles that do not record one). Changing it redoes the cases")
    from pipeline.cohort.executors import EXECUTORS

    p.add_argument("--executor", choices=EXECUTORS.names(), default="local")
    p.add_argument("--ray-address", help="Ray cluster address (default: a running cluster, else a local one)")
    p.add_argument("--ray-workers", type=int, help="model copies (default: one per GPU, else one per 4 CPUs)")
    p.add_argument("--tracking-uri", help="MLflow store for models:/ and runs:/ MODEL values and for tracking the "
                   "batch (default $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    p.add_argument("--experiment", help="MLflow experiment of the batch's run (default: MODEL_NAME-inference)")
    p.add_argument("--no-mlflow", action="store_true", help="do not track the batch in MLflow")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_infer)

    p = sub.add_parser("compare", help="table of runs x test metrics (run folders or an MLflow experiment)")
    p.add_argument("runs", nargs="*", help="run folders")
    p.add_argument("--experiment", help="an MLflow experiment (a workflow's name)")
    p.add_argument("--tracking-uri", help="MLflow store (default $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    p.add_argument("--metrics", nargs="+", help="only metrics starting with these, e.g. dice hd95")
    p.add_argument("--csv", help="also write the table as CSV")
    p.add_argument("--markdown", help="also write the table as Markdown")
    p.set_defaults(func=_cmd_compare)

    p = sub.add_parser("ui", help="open the MLflow UI on the project's store (Ctrl-C stops it)")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    p.add_argument("--tracking-uri", help="the store (default: the workflow's, else $MLFLOW_TRACKING_URI, else "
                   "sqlite:///mlflow.db)")
    p.add_argument("--workflow", help="use this workflow's tracking.tracking_uri")
    p.set_defaults(func=_cmd_ui)

    p = sub.add_parser("tracking", help="MLflow tracking: runs recorded while the tracking server was away")
    tsub = p.add_subparsers(dest="tracking_command", required=True)
    t = tsub.add_parser("sync", help="push a run folder's local fallback store (mlflow-fallback/) to its tracking "
                        "server once it is back (a rerun pushes only what is still missing)")
    t.add_argument("run_dir", help="the run folder `pipeline run` printed (`pipeline infer`: its --output folder)")
    t.add_argument("--tracking-uri", help="push to this store instead of the server the run was meant for")
    t.set_defaults(func=_cmd_tracking_sync)

    from pipeline.data.fetchers import FETCHERS
    from pipeline.data.importers import IMPORTERS

    p = sub.add_parser("data", help="datasets")
    dsub = p.add_subparsers(dest="data_command", required=True)
    f = dsub.add_parser("fetch", help="download a public dataset and write its manifest")
    f.add_argument("dataset", choices=FETCHERS.names())
    f.add_argument("--root", required=True, help="folder to download and extract into")
    f.add_argument("--archive", help="use this already downloaded archive instead of downloading")
    f.add_argument("--md5", help="expected md5 of the archive (default: the official release's)")
    f.add_argument("--quiet", action="store_true", help="no progress bar")
    f.set_defaults(func=_cmd_fetch)
    i = dsub.add_parser("import", help="convert a dataset folder in its own layout to NIfTI + a manifest")
    i.add_argument("dataset", choices=IMPORTERS.names())
    i.add_argument("src", help="the dataset's folder as downloaded")
    i.add_argument("--out", required=True, help="folder for the converted cases and the manifest")
    i.set_defaults(func=_cmd_import)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s",
                        stream=sys.stderr)
    for noisy in ("mlflow", "alembic", "urllib3", "git"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return int(args.func(args))
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except OSError as exc:  # the environment (a read-only folder, a full disk) where no writer turned it into a
        from pipeline.io.atomic import os_error_message  # PipelineError; any other OSError is a bug

        message = os_error_message(exc)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        from pipeline.tracking.process import discard_prewarmed

        discard_prewarmed()  # started for a run that stopped before it tracked (bad input)


if __name__ == "__main__":
    sys.exit(main())
