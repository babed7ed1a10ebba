"""``pipeline run --nproc N``: the same command in N processes on this machine, started by PyTorch's torchrun
(``python -m torch.distributed.run --standalone``); each process then runs ``pipeline run`` as one rank
(:mod:`pipeline.training.distributed`)."""

from __future__ import annotations

import argparse

from pipeline.errors import PipelineError


def run_args(args: argparse.Namespace) -> list[str]:
    """``pipeline run``'s arguments as given, all but ``--nproc``: what each process of a launch runs."""
    out = (["-v"] if args.verbose else []) + ["run", args.workflow]
    for item in args.set:
        out += ["--set", item]
    for flag, value in (("--run-dir", args.run_dir), ("--from", args.from_stage)):
        if value:
            out += [flag, value]
    return out + (["--force"] if args.force else [])


def launch(args: argparse.Namespace) -> int | None:
    """``--nproc N``: the same command in N processes on this machine, started by PyTorch's torchrun, and its exit
    code (None for ``--nproc 1``: run here)."""
    import os
    import signal
    import subprocess

    from pipeline.config.loader import load_workflow
    from pipeline.training.distributed import check_devices, die_with_parent, launch_command

    if args.nproc < 1:
        raise PipelineError(f"--nproc {args.nproc}: give the number of training processes, 1 or more")
    if args.only:
        raise PipelineError("--nproc cannot be combined with --only (only the train stage runs in several processes); "
                            "use --from STAGE")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise PipelineError("--nproc inside a torchrun launch: torchrun starts the processes already; drop --nproc")
    if args.nproc == 1:
        return None
    check_devices(load_workflow(args.workflow, args.set).workflow.train.device, args.nproc)
    # this command killed: torchrun stops its workers (SIGTERM), they stop with it
    return subprocess.run(launch_command(args.nproc, run_args(args)), check=False,
                          preexec_fn=lambda: die_with_parent(signal.SIGTERM)).returncode
