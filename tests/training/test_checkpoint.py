"""Checkpoints: a save/load round trip of everything a resume needs, atomic writes, loading without unpickling
objects, the best-vs-last choice of training, and checkpoints that do not fit refused by name."""

from __future__ import annotations

import os
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from monai.transforms import Compose
from torch import nn

from pipeline.config.loader import load_workflow
from pipeline.config.schema import PreprocessConfig
from pipeline.errors import PipelineError
from pipeline.training import checkpoint, trainer
from pipeline.training.checkpoint import load_checkpoint, restore_rng_state, rng_state, save_checkpoint
from pipeline.transforms.build import random_transforms
from pipeline.transforms.stage import PreprocessedCase
from tests.hostile.harness import refused_call
from tests.utils import blob_dataset, make_affine, tiny_workflow, write_nifti

CPU = torch.device("cpu")
AUGMENT = {"flip_prob": 0.5, "flip_axes": [0, 1], "rotate_prob": 0.5, "intensity_prob": 0.5}


def augmentations() -> Compose:
    return Compose(random_transforms(PreprocessConfig(patch={"size": [4, 4, 4]}, augment=AUGMENT), 3))


def trained() -> tuple[nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """A tiny model, its Adam state and a scheduler after two steps."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv3d(1, 2, 3), nn.BatchNorm3d(2))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.PolynomialLR(opt, total_iters=10, power=0.9)
    for _ in range(2):
        opt.zero_grad()
        model(torch.randn(2, 1, 5, 5, 5)).square().mean().backward()
        opt.step()
        sched.step()
    return model, opt, sched


def draws(transform: Compose, generator: torch.Generator) -> list[Any]:
    """The next values of every generator training draws from."""
    monai = [r.uniform() for r in checkpoint._monai_states(transform)]
    return [random.random(), float(np.random.rand()), float(torch.rand(1)),
            torch.randint(0, 10**6, (3,), generator=generator).tolist(), monai]


def assert_same(a: Any, b: Any, where: str = "state") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


# ------------------------------------------------------------------------------------------------ round trip
def test_round_trip_of_everything_a_resume_needs(tmp_path: Path) -> None:
    model, opt, sched = trained()
    transform, generator = augmentations(), torch.Generator().manual_seed(7)
    transform.set_random_state(3)
    state = {"model_state": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
             "epoch": 4, "best_dice": 0.75, "best_epoch": 3,
             "history": [{"epoch": 1, "train_loss": 0.5, "lr": 1e-2}, {"epoch": 2, "train_loss": 0.25, "lr": 9e-3,
                                                                       "val_dice": float("nan")}],
             "rng": [rng_state(transform, generator, CPU)], "labels": {"0": "background", "1": "organ"}}
    save_checkpoint(tmp_path / "last.pt", state)
    loaded = load_checkpoint(tmp_path / "last.pt")
    nan_row = loaded["history"][1]
    assert nan_row.pop("val_dice") != nan_row.get("val_dice", 0.0)  # NaN survives (NaN != anything)
    state["history"][1].pop("val_dice")
    assert_same(loaded, state)

    # into fresh objects: the next optimisation step is the same as the original's
    fresh, fresh_opt, fresh_sched = trained()
    with torch.no_grad():
        for p in fresh.parameters():
            p.add_(1.0)
    fresh.load_state_dict(loaded["model_state"])
    fresh_opt.load_state_dict(loaded["optimizer"])
    fresh_sched.load_state_dict(loaded["scheduler"])
    x = torch.randn(2, 1, 5, 5, 5)
    for m, o, s in ((model, opt, sched), (fresh, fresh_opt, fresh_sched)):
        o.zero_grad()
        m(x).square().mean().backward()
        o.step()
        s.step()
    assert_same(fresh.state_dict(), model.state_dict())
    assert fresh_opt.param_groups[0]["lr"] == opt.param_groups[0]["lr"]


def test_taking_the_random_states_changes_none(tmp_path: Path) -> None:
    """Saving a checkpoint mid-stream does not re-seed anything: the draws after it are those without it."""
    draws_after = []
    for save in (False, True):
        transform, generator = augmentations(), torch.Generator().manual_seed(1)
        random.seed(1), np.random.seed(1), torch.manual_seed(1), transform.set_random_state(1)
        if save:
            rng_state(transform, generator, CPU)
        draws_after.append(draws(transform, generator))
    assert draws_after[0] == draws_after[1]


def test_random_states_restored_give_the_same_next_draws(tmp_path: Path) -> None:
    """Python's, NumPy's, PyTorch's, the sampler's and every MONAI augmentation's generator."""
    transform, generator = augmentations(), torch.Generator().manual_seed(1)
    random.seed(1), np.random.seed(1), torch.manual_seed(1), transform.set_random_state(1)
    assert len(checkpoint._monai_states(transform)) >= 4  # flips x2, rotation, intensity scale and shift
    save_checkpoint(tmp_path / "rng.pt", {"rng": rng_state(transform, generator, CPU)})
    expected = draws(transform, generator)

    other, other_gen = augmentations(), torch.Generator().manual_seed(99)
    random.seed(99), np.random.seed(99), torch.manual_seed(99), other.set_random_state(99)
    restore_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"], other, other_gen, CPU)
    assert draws(other, other_gen) == expected


def test_random_states_of_another_augmentation_chain_are_refused(tmp_path: Path) -> None:
    saved = rng_state(augmentations(), torch.Generator(), CPU)
    fewer = Compose(random_transforms(PreprocessConfig(patch={"size": [4, 4, 4]}, augment={"flip_prob": 0.5}), 3))
    n_saved, n_now = len(saved["monai"]), len(checkpoint._monai_states(fewer))
    assert n_saved > n_now
    with pytest.raises(PipelineError, match=rf"holds {n_saved} augmentation random states but the workflow has "
                                            rf"{n_now} random"):
        restore_rng_state(saved, fewer, torch.Generator(), CPU)


# ----------------------------------------------------------------------------------------------------- atomic
def test_a_failure_mid_save_leaves_the_old_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "last.pt"
    save_checkpoint(target, {"epoch": 1, "w": torch.arange(5)})
    real_save = torch.save

    def dies_half_way(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        real_save({"epoch": 2, "w": torch.zeros(1000)}, f, *args, **kwargs)
        with open(f, "r+b") as fh:  # half a file, as a killed or failing writer leaves it
            fh.truncate(os.path.getsize(f) // 2)
        raise RuntimeError("simulated failure while writing")

    monkeypatch.setattr(checkpoint.torch, "save", dies_half_way)
    with pytest.raises(RuntimeError, match="simulated failure"):
        save_checkpoint(target, {"epoch": 2, "w": torch.zeros(1000)})
    monkeypatch.setattr(checkpoint.torch, "save", real_save)
    assert_same(load_checkpoint(target), {"epoch": 1, "w": torch.arange(5)})
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary left behind


def test_a_save_replaces_the_file_whole(tmp_path: Path) -> None:
    target = tmp_path / "best.pt"
    save_checkpoint(target, {"epoch": 1, "w": torch.zeros(10_000)})
    save_checkpoint(target, {"epoch": 2})
    assert load_checkpoint(target) == {"epoch": 2} and [p.name for p in tmp_path.iterdir()] == ["best.pt"]


# --------------------------------------------------------------------------------------------- weights only
class _Payload:
    """An object whose unpickling creates a folder: proof that loading ran code from the file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.makedirs, (str(self.marker),))


def test_a_checkpoint_holding_a_python_object_is_refused_without_running_it(tmp_path: Path) -> None:
    """A checkpoint holding a pickled object → refused by name; the object's code never runs."""
    marker = tmp_path / "code-ran"
    path = tmp_path / "last.pt"
    torch.save({"epoch": 1, "model_state": {}, "extra": _Payload(marker)}, path)
    refusal = refused_call(lambda: load_checkpoint(path), PipelineError, names=[str(path), "delete it"])
    assert not marker.exists(), "loading the checkpoint ran code from it"
    assert "weights_only=False" not in refusal.message  # never advise loading it unsafely


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty", "pickle"])
def test_a_damaged_checkpoint_is_refused_by_name(tmp_path: Path, damage: str) -> None:
    """A damaged or foreign checkpoint file → one line naming it and what to do."""
    path = tmp_path / "best.pt"
    save_checkpoint(path, {"epoch": 3, "w": torch.arange(1000)})
    data = path.read_bytes()
    path.write_bytes({"garbage": b"not a checkpoint at all\n" * 10, "truncated": data[: len(data) // 2],
                      "empty": b"", "pickle": pickle.dumps({"epoch": 3})}[damage])
    refused_call(lambda: load_checkpoint(path), PipelineError, names=[str(path), "re-run training"])


def test_a_missing_checkpoint_is_named(tmp_path: Path) -> None:
    """A missing checkpoint → 'checkpoint not found: <path>'."""
    refused_call(lambda: load_checkpoint(tmp_path / "nope.pt"), PipelineError,
                 names=[f"checkpoint not found: {tmp_path / 'nope.pt'}"])


# ------------------------------------------------------------------------------------ best vs last, resume
class Scripted:
    """Stands in for validation: returns the given Dice values in turn and keeps the weights it was shown."""

    def __init__(self, dices: list[float]) -> None:
        self.dices, self.seen = list(dices), []

    def __call__(self, model: nn.Module, *args: Any) -> float:
        self.seen.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return self.dices.pop(0)


def tiny_training(tmp: Path, monkeypatch: pytest.MonkeyPatch, dices: list[float], epochs: int, *,
                  resume: bool = False, validation: bool = True, **overrides: Any) -> tuple[Any, Scripted, Path]:
    """``train()`` on two 16x16x8 preprocessed cases (one for validation), with a scripted validation Dice."""
    run = tmp / "run"
    cases: dict[str, tuple[PreprocessedCase, ...]] = {}
    rng = np.random.default_rng(0)
    for split, cid in (("training", "a"), ("validation", "b")):
        image, label = f"preprocess/{cid}_image.nii", f"preprocess/{cid}_label.nii"
        if not (run / label).is_file():
            lab = np.zeros((16, 16, 8), np.uint8)
            lab[4:12, 4:12, 2:6] = 1
            write_nifti(run / image, (lab * 2 + rng.normal(0, 0.5, lab.shape)).astype(np.float32), make_affine())
            write_nifti(run / label, lab, make_affine())
        if split == "training" or validation:
            cases[split] = (PreprocessedCase(id=cid, image=image, label=label),)
    if not (tmp / "wf.yaml").is_file():
        blob_dataset(tmp / "data", n_train=1, n_val=0, n_test=0)
    wf_path = tiny_workflow(tmp / "wf.yaml", tmp / "data" / "dataset.json",
                            **{"train.epochs": epochs, "train.iterations_per_epoch": 1, **overrides})
    wf = load_workflow(wf_path).workflow
    scripted = Scripted(dices)
    monkeypatch.setattr(trainer, "validate", scripted)
    (run / "train").mkdir(parents=True, exist_ok=True)
    result = trainer.train(wf, run, run / "train", cases, {"0": "background", "1": "organ"}, ["T2"], resume, 3)
    return result, scripted, run / "train"


def test_best_is_the_first_epoch_of_the_highest_dice_and_last_the_last(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    result, scripted, folder = tiny_training(tmp_path, monkeypatch, [0.5, 0.8, 0.8, 0.3], epochs=4)
    best, last = load_checkpoint(folder / "best.pt"), load_checkpoint(folder / "last.pt")
    assert (result.best_dice, result.best_epoch) == (0.8, 2)
    assert best["epoch"] == 1 and best["val_dice"] == 0.8  # 0-based epoch: the second one, not the tied fourth
    assert_same(best["model_state"], scripted.seen[1], "best.pt model_state")
    assert last["epoch"] == 3 and last["best_dice"] == 0.8 and last["best_epoch"] == 2
    assert_same(last["model_state"], scripted.seen[3], "last.pt model_state")
    assert "optimizer" in last and "optimizer" not in best  # only last.pt carries what a resume needs
    assert [row["val_dice"] for row in last["history"]] == [0.5, 0.8, 0.8, 0.3]
    meta = {"name": "vnet", "in_channels": 1, "out_channels": 2, "spatial_dims": 3}
    assert all(best["model"][k] == v for k, v in meta.items()) and best["labels"] == {"0": "background", "1": "organ"}


def test_without_validation_cases_best_is_the_last_epoch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result, scripted, folder = tiny_training(tmp_path, monkeypatch, [], epochs=3, validation=False)
    assert scripted.seen == [] and result.best_epoch == 3 and result.best_dice < 0  # no validation Dice
    best, last = load_checkpoint(folder / "best.pt"), load_checkpoint(folder / "last.pt")
    assert best["epoch"] == last["epoch"] == 2
    assert_same(best["model_state"], last["model_state"])


def test_validation_every_n_epochs_and_at_the_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result, scripted, _ = tiny_training(tmp_path, monkeypatch, [0.4, 0.2, 0.3], epochs=5,
                                        **{"train.val_every": 2})
    assert len(scripted.seen) == 3 and result.best_epoch == 2
    assert ["val_dice" in row for row in result.history] == [False, True, False, True, True]


def test_a_resume_continues_from_last_pt_instead_of_restarting(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Epochs 1-2 validated 0.5 and 0.6; the resumed run validates only epochs 3-4 (a restart would revalidate
    from epoch 1 and record 0.9 for it)."""
    tiny_training(tmp_path, monkeypatch, [0.5, 0.6], epochs=2)
    result, scripted, _ = tiny_training(tmp_path, monkeypatch, [0.9, 0.1], epochs=4, resume=True)
    assert result.resumed_from_epoch == 2 and len(scripted.seen) == 2
    assert [row["val_dice"] for row in result.history] == [0.5, 0.6, 0.9, 0.1]
    assert (result.best_dice, result.best_epoch) == (0.9, 3)


def test_a_checkpoint_of_another_model_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A ``last.pt`` saved by another model in the train folder → refused by name, with the models it found."""
    tiny_training(tmp_path, monkeypatch, [0.5], epochs=1, **{"model.base_channels": 8})
    folder = tmp_path / "run" / "train"
    refused_call(lambda: tiny_training(tmp_path, monkeypatch, [0.5], epochs=2, resume=True), PipelineError,
                 names=[str(folder / "last.pt"), "base_channels", "8", "4"], seconds=30)


def test_weights_that_do_not_fit_the_model_are_refused(tmp_path: Path) -> None:
    """Weights of another shape under the same model description (e.g. from another version) → one line naming
    the file and the first mismatch."""
    path = tmp_path / "train" / "last.pt"
    save_checkpoint(path, {"model": {"name": "tiny"}, "model_state": nn.Conv3d(1, 4, 3).state_dict()})
    refusal = refused_call(lambda: checkpoint.load_model_state(nn.Conv3d(1, 2, 3), load_checkpoint(path), path,
                                                               {"name": "tiny"}),
                           PipelineError, names=[str(path), "size mismatch for weight", str(path.parent)])
    assert "\n" not in refusal.message
    save_checkpoint(path, {"model_state": {f"layer{i}.weight": torch.zeros(1) for i in range(100)}})
    refusal = refused_call(lambda: checkpoint.load_model_state(nn.Conv3d(1, 2, 3), load_checkpoint(path), path),
                           PipelineError, names=[str(path), "Missing key(s)"])
    assert len(refusal.message) < 500
