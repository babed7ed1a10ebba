"""Every registered fetcher, whatever its name: a test module, the CLI's choices and dispatch through the registry."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from pipeline.cli import build_parser, main
from pipeline.data import fetchers
from pipeline.data.fetchers import FETCHERS, Fetcher, register_fetcher
from pipeline.registry import Registry
from tests.data.importers.test_registry import cli_choices


def test_registry_is_filled_from_the_package():
    assert "msd-prostate" in FETCHERS
    for name in FETCHERS.names():
        fetcher = FETCHERS.get(name)
        assert isinstance(fetcher, Fetcher)
        assert fetcher.fetch.__module__.startswith("pipeline.data.fetchers."), name
        assert (Path(__file__).resolve().parents[3] / fetcher.workflow).is_file(), fetcher.workflow


@pytest.mark.parametrize("name", FETCHERS.names())
def test_every_fetcher_has_a_test_module(name):
    module = FETCHERS.get(name).fetch.__module__.rsplit(".", 1)[-1]
    tests = importlib.import_module(f"tests.data.fetchers.test_{module}")
    assert any(k.startswith("test_") and callable(v) for k, v in vars(tests).items()), tests.__name__


def test_cli_choices_are_the_registry():
    assert cli_choices(build_parser(), "fetch") == FETCHERS.names()


def test_duplicate_name_is_refused():
    with pytest.raises(ValueError, match="already registered"):
        register_fetcher("msd-prostate", workflow="workflows/x.yaml")(lambda root, **kw: root)


@pytest.mark.parametrize("md5", [None, "ab" * 16])
def test_a_new_fetcher_reaches_the_cli_without_touching_it(tmp_path, monkeypatch, capsys, md5):
    calls = []

    def fetch_dummy(root: Path, *, md5: str = "default", archive: Path | None = None, progress: bool = True) -> Path:
        calls.append({"root": root, "md5": md5, "archive": archive, "progress": progress})
        return root / "dummy.json"

    registry = Registry("data set fetcher")
    for name in FETCHERS.names():
        registry.register(name)(FETCHERS.get(name))
    monkeypatch.setattr(fetchers, "FETCHERS", registry)
    register_fetcher("dummy-set", workflow="workflows/dummy.yaml")(fetch_dummy)

    assert "dummy-set" in cli_choices(build_parser(), "fetch")
    args = ["data", "fetch", "dummy-set", "--root", str(tmp_path), "--archive", str(tmp_path / "a.tar"), "--quiet"]
    assert main(args + (["--md5", md5] if md5 else [])) == 0
    assert calls == [{"root": tmp_path, "md5": md5 or "default", "archive": tmp_path / "a.tar", "progress": False}]
    out = capsys.readouterr().out
    assert f"manifest written: {tmp_path / 'dummy.json'}" in out
    assert f"pipeline run workflows/dummy.yaml --set data.manifest={tmp_path / 'dummy.json'}" in out
