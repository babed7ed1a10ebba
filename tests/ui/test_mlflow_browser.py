"""A tiny workflow tracked to a real ``mlflow server``, looked at in headless Chromium (MLflow 3 UI).

One module-scoped fixture starts ``mlflow server`` (SQLite store, local artifact root, free port on 127.0.0.1) and
runs a tiny 3D workflow against it (``--set tracking.tracking_uri=http://127.0.0.1:PORT``); the tests then check
what a person sees:

1. the experiment opens in the model-training view (Runs / Models in the sidebar, not GenAI's Traces / Judges /
   Prompts);
2. the run's test Dice (``test_dice_mean``) is in the runs table;
3. the per-case overlay images are on the run page (image cards of the "Model metrics" tab, and the PNG in the
   "Artifacts" tab).

Screenshots (1400x900) go to the test's tmp folder and, when ``$PIPELINE_SCREENSHOTS`` names a folder (e.g.
``docs/img``), there too.

How the MLflow 3.17 UI is driven (found by reading its bundle and trying it):

- The sidebar's GenAI / "Model training" switch decides the view, not the experiment's ``mlflow.experimentKind``
  tag: with workflow-based navigation (always on in 3.17) the UI derives the experiment kind from the switch,
  which is the ``workflowType`` URL parameter, else the browser's remembered choice (localStorage), else GenAI.
  A fresh browser opening ``#/experiments/<id>`` therefore lands in GenAI's overview whatever the tag says. The
  tests open ``#/experiments/<id>?workflowType=machine_learning``, the address the switch itself navigates to,
  and check the tag through the API.
- The runs table shows no metric columns by default: ``test_dice_mean`` is added with the table's "Columns"
  selector (and the always-empty "Models" column of a training run without a logged model is removed there, so
  the metric fits the screenshot).
- An image card of the "Model metrics" tab lists every run parameter above its image (about 100 here), which
  pushes the image out of the card; the card's own "Configure" dialog has "Show run parameters", switched off
  before the image is checked on screen.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.ui.browser import VIEWPORT, launch_chromium, mlflow_server, require_browser, save_screenshot
from tests.utils import blob_dataset, tiny_workflow

pytestmark = pytest.mark.browser

TIMEOUT_MS = 30_000
ML_VIEW = "workflowType=machine_learning"
ASSISTANT_CLOSE = '[data-component-id="mlflow.assistant.chat_panel.close"]'
COLUMN_NODE = ".du-bois-light-tree-treenode"
CHECKED = "du-bois-light-tree-treenode-checkbox-checked"
CARD = '[data-testid="experiment-view-compare-runs-card"]'  # a chart card of the run page
CARD_MENU = '[data-testid="experiment-view-compare-runs-card-menu"]'  # its "⋮" menu


@dataclass
class Tracked:
    url: str
    experiment_id: str
    run_id: str
    run_name: str
    dice: float
    cases: list[str]
    shots: Path


@pytest.fixture(scope="module")
def tracked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tracked]:
    """``mlflow server`` with one finished tiny run (2 training, 1 validation, 2 test cases)."""
    require_browser()
    from mlflow.tracking import MlflowClient

    from pipeline.config.loader import load_workflow
    from pipeline.stages import run_workflow

    tmp = tmp_path_factory.mktemp("ui")
    with pytest.MonkeyPatch.context() as mp, mlflow_server(tmp / "server") as server:
        # MLflow's telemetry would try to fetch its config from the internet: off, as in CI
        mp.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        manifest = blob_dataset(tmp / "data", n_train=2, n_val=1, n_test=2)
        wf = tiny_workflow(tmp / "wf.yaml", manifest, description="Blobs in 3D, tracked to an MLflow server.", **{
            # a few seconds more than the 2 epochs of tiny_workflow, for a run worth a screenshot (Dice ~0.85)
            "train.epochs": 20, "train.iterations_per_epoch": 3, "train.val_every": 5,
            "train.optimizer": {"name": "adam", "lr": 0.01}, "postprocess.keep_largest_component": True})
        loaded = load_workflow(wf, ["tracking.enabled=true", f"tracking.tracking_uri={server.url}",
                                    "tracking.system_metrics=null"])  # imports the stages while the server starts
        server.wait_ready()
        result = run_workflow(loaded, run_dir=tmp / "run")
        assert not (result.run_dir / "mlflow-fallback").exists(), (
            f"the run went to the local fallback store, not to {server.url}; server log:\n"
            f"{server.log.read_text(errors='replace')[-3000:]}")
        assert result.mlflow_run_id and result.summary is not None
        run = MlflowClient(server.url).get_run(result.mlflow_run_id)
        assert run.info.status == "FINISHED"
        cases = [c["id"] for c in json.loads(manifest.read_text())["test"]]
        yield Tracked(server.url, run.info.experiment_id, run.info.run_id, run.info.run_name,
                      float(run.data.metrics["test_dice_mean"]), cases, tmp / "screenshots")


class UI:
    """One Chromium context for the module (the UI remembers its settings in the context's localStorage)."""

    def __init__(self, context: Any, tracked: Tracked) -> None:
        self.context = context
        self.t = tracked
        self.assistant_closed = False
        self.pages: list[Any] = []

    def open(self, route: str) -> Any:
        page = self.context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        self.pages.append(page)
        page.goto(f"{self.t.url}/#{route}")
        return page

    def close_pages(self, failed: str | None = None) -> None:
        """Close the test's pages; when it failed, keep a screenshot of each (``FAILED-<test>-<n>.png``)."""
        for n, page in enumerate(self.pages):
            if failed and not page.is_closed():
                with contextlib.suppress(Exception):
                    shot = save_screenshot(page, f"FAILED-{failed}-{n}", self.t.shots)
                    print(f"\n{failed}: {page.url}\n  screenshot: {shot}")
            with contextlib.suppress(Exception):
                    self.pages.clear()

    def close_assistant(self, page: Any) -> None:
        """The "MLflow Assistant" panel opens by itself on the first page of a browser and covers a third of the
        window: closed with its own button (the UI then keeps it closed)."""
        if self.assistant_closed:
            return
        from playwright.sync_api import TimeoutError as PlaywrightTimeout

        try:
            page.locator(ASSISTANT_CLOSE).click(timeout=10_000)
        except PlaywrightTimeout:  # a UI that no longer opens it
            pass
        self.assistant_closed = True

    def shot(self, page: Any, name: str) -> Path:
        page.mouse.move(VIEWPORT["width"] // 2, 4)  # no hover toolbar or tooltip in the picture
        return save_screenshot(page, name, self.t.shots)


@pytest.fixture(scope="module")
def ui(tracked: Tracked) -> Iterator[UI]:
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=TIMEOUT_MS)  # 5 s by default: short for a first page of the UI on a busy machine
    with sync_playwright() as p:
        browser = launch_chromium(p)
        context = browser.new_context(viewport=VIEWPORT, device_scale_factor=1)
        try:
            yield UI(context, tracked)
        finally:
            context.close()
            browser.close()
    print(f"\nscreenshots: {tracked.shots}")


@pytest.fixture(autouse=True)
def _pages(request: pytest.FixtureRequest, ui: UI) -> Iterator[None]:
    yield
    report = getattr(request.node, "rep_call", None)
    ui.close_pages(failed=request.node.name if report is not None and report.failed else None)


def _open_experiment(ui: UI) -> Any:
    from playwright.sync_api import expect

    page = ui.open(f"/experiments/{ui.t.experiment_id}?{ML_VIEW}")
    expect(page.get_by_role("heading", name="Runs", exact=True)).to_be_visible()
    ui.close_assistant(page)
    return page


def _image_loaded(page: Any, img: Any) -> None:
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=img.element_handle(),
                           timeout=TIMEOUT_MS)


def _inside(inner: dict[str, float], outer: dict[str, float], slack: float = 1.0) -> bool:
    return (inner["x"] >= outer["x"] - slack and inner["y"] >= outer["y"] - slack
            and inner["x"] + inner["width"] <= outer["x"] + outer["width"] + slack
            and inner["y"] + inner["height"] <= outer["y"] + outer["height"] + slack)


def _viewport_box() -> dict[str, float]:
    return {"x": 0, "y": 0, "width": VIEWPORT["width"], "height": VIEWPORT["height"]}


def test_experiment_opens_in_the_model_training_view(tracked: Tracked, ui: UI) -> None:
    from mlflow.tracking import MlflowClient
    from playwright.sync_api import expect

    tags = MlflowClient(tracked.url).get_experiment(tracked.experiment_id).tags
    assert tags.get("mlflow.experimentKind") == "custom_model_development", tags

    page = _open_experiment(ui)
    eid = tracked.experiment_id
    # the experiment's address lands on its runs table (GenAI's lands on overview/usage)
    expect(page).to_have_url(re.compile(rf"#/experiments/{eid}/runs\?.*{ML_VIEW}"))
    expect(page.locator(f'a[href^="#/experiments/{eid}/runs"]', has_text="Runs")).to_be_visible()
    expect(page.locator(f'a[href^="#/experiments/{eid}/models"]', has_text="Models")).to_be_visible()
    for genai in ("Judges", "Prompts", "Sessions", "Evaluation runs"):
        expect(page.get_by_role("link", name=genai, exact=True)).to_have_count(0)
    expect(page.get_by_text("Training runs", exact=True)).to_have_count(0)  # the GenAI view's title of the table
    expect(page.get_by_text("Blobs in 3D, tracked to an MLflow server.").first).to_be_visible()  # its description
    expect(page.get_by_role("link", name=tracked.run_name, exact=True)).to_be_visible()


def _set_column(page: Any, title: str, shown: bool) -> None:
    """Show or hide a runs-table column with the table's "Columns" selector (open)."""
    from playwright.sync_api import expect

    search = page.get_by_placeholder("Search columns")
    search.fill(title)
    # a match of the search is drawn as <span class=...-tree-title><span><strong>name</strong></span></span>
    name = page.locator(".du-bois-light-tree-title").get_by_text(title, exact=True)
    node = page.locator(COLUMN_NODE).filter(has=name)
    if (CHECKED in (node.get_attribute("class") or "")) != shown:
        node.locator(".du-bois-light-tree-checkbox").click()
    checked = re.compile(rf"\b{CHECKED}\b")
    if shown:
        expect(node).to_have_class(checked)
    else:
        expect(node).not_to_have_class(checked)
    search.fill("")


def test_runs_table_shows_the_test_dice(tracked: Tracked, ui: UI) -> None:
    from playwright.sync_api import expect

    page = _open_experiment(ui)
    page.get_by_role("button", name="Columns").click()
    _set_column(page, "test_dice_mean", shown=True)
    _set_column(page, "Models", shown=False)
    page.keyboard.press("Escape")
    expect(page.get_by_placeholder("Search columns")).to_be_hidden()

    row = f'[role="row"][row-id="{tracked.run_id}"]'
    expect(page.locator(row).get_by_role("link", name=tracked.run_name, exact=True)).to_be_visible()
    expect(page.locator('[data-testid="sort-header-test_dice_mean"]')).to_be_visible()
    cell = page.locator(f'{row} [role="gridcell"][col-id="metrics.`test_dice_mean`"]')
    expect(cell).to_be_visible()
    expect(cell).to_have_text(re.compile(r"^\s*\d\.\d+"))
    assert float(cell.inner_text()) == pytest.approx(tracked.dice, abs=1e-4)
    box = cell.bounding_box()
    assert box is not None and _inside(box, _viewport_box()), f"the Dice cell is off screen: {box}"
    ui.shot(page, "mlflow_runs_table")


def test_run_page_shows_the_overlay_images(tracked: Tracked, ui: UI) -> None:
    from playwright.sync_api import expect

    page = ui.open(f"/experiments/{tracked.experiment_id}/runs/{tracked.run_id}?{ML_VIEW}")
    expect(page.get_by_role("heading", name=tracked.run_name, exact=True)).to_be_visible()
    ui.close_assistant(page)
    expect(page.get_by_role("tab", name="Overview")).to_have_attribute("aria-selected", "true")
    ui.shot(page, "mlflow_run_overview")

    # "Model metrics": one image card per test case, keyed overlay/<case>
    page.get_by_role("tab", name="Model metrics").click()
    for case in tracked.cases:
        title = page.locator(f'h4[title="overlay/{case}"]')
        expect(title).to_be_visible()
        card = page.locator(CARD).filter(has=title)
        img = card.locator("img.rc-image-img")
        expect(img).to_have_count(1)
        _image_loaded(page, img)
        # the card lists every run parameter above the image: its "Configure" dialog hides them
        card.locator(CARD_MENU).click()
        page.get_by_role("menuitem", name="Configure").click()
        switch = page.get_by_role("switch", name="Show run parameters")
        if switch.get_attribute("aria-checked") == "true":
            switch.click()
        expect(switch).to_have_attribute("aria-checked", "false")
        page.get_by_role("button", name="Save changes").click()
        expect(page.get_by_role("button", name="Save changes")).to_be_hidden()
        img = card.locator("img.rc-image-img")
        _image_loaded(page, img)
        img_box, card_box = img.bounding_box(), card.bounding_box()
        assert img_box is not None and card_box is not None
        assert img_box["height"] >= 100 and _inside(img_box, card_box), (case, img_box, card_box)
        assert _inside(img_box, _viewport_box()), f"overlay/{case} is off screen: {img_box}"
    ui.shot(page, "mlflow_run_images")

    # "Artifacts": evaluate/overlays/<case>.png, previewed
    case = tracked.cases[0]
    page.get_by_role("tab", name="Artifacts").click()
    for name in ("evaluate", "overlays", f"{case}.png"):
        page.locator(f'[data-testid="artifact-tree-node"][artifact-name="{name}"]').click()
    preview = page.locator(f'img[alt="evaluate/overlays/{case}.png"]')
    expect(preview).to_be_visible()
    _image_loaded(page, preview)
    box = preview.bounding_box()
    assert box is not None and box["height"] >= 200, box
    ui.shot(page, "mlflow_run_artifact_overlay")
