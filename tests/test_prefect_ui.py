"""The Prefect UI shows a finished pipeline run's artifacts, in a real headless Chromium.

A real ``prefect server start`` (which serves the UI on the API's port) records one run of the pipeline
flow on the tiny config and model double of tests/test_pipeline_flow.py; Debian's ``chromium``, driven
by Selenium through Debian's ``chromedriver``, then opens the flow run's Artifacts tab and the metrics
and report artifacts, and must find their content rendered by the single-page app. Screenshots of each
page are saved in the test's temporary directory.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ragdistill.inference import shared
from test_pipeline_flow import AgentAndExtractorDouble, flow_config, run_pipeline, ui_artifacts  # noqa: F401
from test_prefect_server import fresh_prefect_home  # noqa: F401  (fixture)

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
# Headless as root in a container: no sandbox, no GPU, and nothing that reaches the network by itself.
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1000",
)
RENDER_TIMEOUT_S = 90.0

pytestmark = pytest.mark.requires(
    CHROMIUM.exists() and CHROMEDRIVER.exists(),
    f"Debian's chromium and chromium-driver are not at {CHROMIUM} and {CHROMEDRIVER} (`.ci/run` installs them)",
)


@pytest.fixture
def browser() -> Iterator[Any]:
    """A headless Chromium under Selenium, with a new empty profile."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="ragdistill-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait_for_text(driver: Any, rendered: Callable[[str], bool], screenshot: Path) -> str:
    """Wait until the page's visible text satisfies ``rendered``; the text. The page is saved as a PNG
    either way, so a failure shows what the browser saw."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    text = ""

    def body_rendered(d: Any) -> bool:
        nonlocal text
        text = d.find_element(By.TAG_NAME, "body").text
        return rendered(text)

    try:
        WebDriverWait(driver, RENDER_TIMEOUT_S, poll_frequency=0.5).until(body_rendered)
    except TimeoutException:
        pass
    finally:
        driver.save_screenshot(str(screenshot))
    return text


def click(driver: Any, xpath: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, RENDER_TIMEOUT_S).until(
        expected_conditions.element_to_be_clickable((By.XPATH, xpath))
    ).click()


def report_headline(markdown: str) -> str:
    return next(line for line in markdown.splitlines() if line.startswith("# ")).removeprefix("# ").strip()


def open_the_runs_artifacts_as_a_user(
    driver: Any, ui_url: str, flow_run_id: str, artifacts: dict[str, Any], screenshots: Path
) -> dict[str, Any]:
    """Open the flow run's page, its Artifacts tab, the metrics card there, then the report artifact's
    page; each page's visible text by name ("run", "metrics", "report") and the pixel widths of the
    report's rendered figures ("figure widths", 0 for one that did not load)."""
    headline = report_headline(artifacts["report"].data)
    metrics_description = str(artifacts["metrics"].description)
    driver.get(f"{ui_url}/runs/flow-run/{flow_run_id}")
    click(driver, "//li[@role='tab' or contains(@class, 'p-tab')][normalize-space(.)='Artifacts']")
    run = wait_for_text(
        driver, lambda text: metrics_description in text and "\nreport\n" in text, screenshots / "run.png"
    )
    click(driver, f"//*[normalize-space(text())='{metrics_description}']")
    metrics = wait_for_text(
        driver, lambda text: "success %" in text and "\ndistill\n" in text, screenshots / "metrics.png"
    )
    assert driver.current_url.endswith(f"/artifacts/artifact/{artifacts['metrics'].latest_id}")
    driver.get(f"{ui_url}/artifacts/artifact/{artifacts['report'].latest_id}")
    report = wait_for_text(driver, lambda text: headline in text, screenshots / "report.png")
    figures = driver.execute_script(
        "return Array.from(document.images).filter(i => i.alt.startsWith('Success rate'))"
        ".map(i => i.complete ? i.naturalWidth : 0)"
    )
    return {"run": run, "metrics": metrics, "report": report, "figure widths": figures}


@pytest.mark.slow
def test_the_ui_shows_a_finished_pipeline_runs_metrics_table_and_report(
    fresh_prefect_home: Path,  # noqa: F811
    flow_config: Path,  # noqa: F811
    browser: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from ragdistill.orchestration.server import prefect_api

    monkeypatch.setattr(shared, "_BACKENDS", dict(shared._BACKENDS))
    with prefect_api(timeout_s=600) as api_url:
        summary, _ = run_pipeline(flow_config, AgentAndExtractorDouble())
        artifacts = ui_artifacts()
        flow_run_id = str(artifacts["metrics"].flow_run_id)
        ui_url = api_url.removesuffix("/api")
        with urllib.request.urlopen(f"{ui_url}/ui-settings", timeout=30) as response:
            assert json.load(response)["api_url"] == api_url, "the UI must call the API it is served with"
        pages = open_the_runs_artifacts_as_a_user(browser, ui_url, flow_run_id, artifacts, tmp_path)

    assert summary["report"]["methods"] == 2
    assert "Completed" in pages["run"] and "\nreport\n" in pages["run"], pages["run"][-3000:]
    assert "success %" in pages["metrics"] and "not run" in pages["metrics"], pages["metrics"][-3000:]
    rows = pages["metrics"].splitlines()
    assert {"base", "rag", "distill"} <= set(rows), "one row per method"
    assert "the distill training set is empty" in pages["metrics"], "the skipped method's reason"
    report = pages["report"]
    assert report_headline(artifacts["report"].data) in report, report[-3000:]
    assert "Results (paper layout)" in report and "training set is empty" in report, report[-3000:]
    assert pages["figure widths"] and all(pages["figure widths"]), "the report's figure loads in the page"
