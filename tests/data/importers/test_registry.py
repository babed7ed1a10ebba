"""Every registered importer, whatever its name: dispatch, layout errors, a test module, the CLI's choices."""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

import pytest

from pipeline.cli import build_parser, main
from pipeline.data import importers
from pipeline.data.importers import IMPORTERS, import_dataset
from pipeline.errors import DataError
from pipeline.registry import Registry


def _test_module(name: str):
    """The test module of the importer registered as ``name``: ``tests/data/importers/test_<module>.py``."""
    module = IMPORTERS.get(name).__module__.rsplit(".", 1)[-1]
    return importlib.import_module(f"tests.data.importers.test_{module}")


def cli_choices(parser: argparse.ArgumentParser, command: str) -> list[str]:
    """The ``choices`` of ``pipeline data COMMAND DATASET``."""

    def subcommands(p: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
        return next(a for a in p._actions if isinstance(a, argparse._SubParsersAction)).choices

    sub = subcommands(subcommands(parser)["data"])[command]
    return list(next(a for a in sub._actions if a.dest == "dataset").choices)


def test_unknown_name_and_missing_source(tmp_path):
    with pytest.raises(DataError, match="known: ctc"):
        import_dataset("dsb2019", tmp_path, tmp_path / "out")
    with pytest.raises(DataError, match="does not exist"):
        import_dataset("dsb2018", tmp_path / "nope", tmp_path / "out")


def test_unknown_name_lists_every_registered_name_and_suggests(tmp_path):
    with pytest.raises(DataError) as exc:
        import_dataset("dsb2019", tmp_path, tmp_path / "out")
    assert f"known: {', '.join(IMPORTERS.names())}." in str(exc.value)
    assert "Did you mean 'dsb2018'?" in str(exc.value)


def test_registry_is_filled_from_the_package():
    assert IMPORTERS.names(), "no importer registered"
    for name in IMPORTERS.names():
        assert IMPORTERS.get(name).__module__.startswith("pipeline.data.importers."), name


@pytest.mark.parametrize("name", IMPORTERS.names())
def test_every_importer_has_a_test_module(name):
    module = _test_module(name)
    assert isinstance(module.WRONG_LAYOUT, str)
    assert any(k.startswith("test_") and callable(v) for k, v in vars(module).items()), module.__name__


@pytest.mark.parametrize("content", ["empty", "readme"])
@pytest.mark.parametrize("name", IMPORTERS.names())
def test_wrong_layout(tmp_path, name, content):
    src = tmp_path / "src"
    src.mkdir()
    if content == "readme":
        (src / "readme.txt").write_text("not a data set")
    with pytest.raises(DataError, match=_test_module(name).WRONG_LAYOUT):
        import_dataset(name, src, tmp_path / "out")


def test_cli_choices_are_the_registry():
    parser = build_parser()
    assert cli_choices(parser, "import") == IMPORTERS.names()


def test_a_new_importer_reaches_the_cli_without_touching_it(tmp_path, monkeypatch, capsys):
    calls = []

    def import_dummy(src: Path, out: Path) -> Path:
        calls.append((src, out))
        return out / "dummy.json"

    registry = Registry("data set importer")
    for name in IMPORTERS.names():
        registry.register(name)(IMPORTERS.get(name))
    registry.register("dummy-set")(import_dummy)
    monkeypatch.setattr(importers, "IMPORTERS", registry)

    assert "dummy-set" in cli_choices(build_parser(), "import")
    (tmp_path / "src").mkdir()
    assert main(["data", "import", "dummy-set", str(tmp_path / "src"), "--out", str(tmp_path / "out")]) == 0
    assert calls == [(tmp_path / "src", tmp_path / "out")]
    assert f"manifest written: {tmp_path / 'out' / 'dummy.json'}" in capsys.readouterr().out
    assert import_dataset("dummy_set", tmp_path / "src", tmp_path / "out2") == tmp_path / "out2" / "dummy.json"


def test_import_command_rejects_wrong_layout(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["data", "import", "dsb2018", str(tmp_path / "empty"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "DSB 2018" in err and "Traceback" not in err


def test_import_command_rejects_unregistered_name(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["data", "import", "no-such-set", str(tmp_path), "--out", str(tmp_path / "out")])
    assert "invalid choice" in capsys.readouterr().err
