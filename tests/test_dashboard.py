"""The dashboard in a real headless Chromium (Debian's ``chromium`` + ``chromium-driver``, driven by
selenium), clicking through a run that really ran: sign in, open the finished run, see its stages
with their Ray submission ids, the metric charts of its epochs, the pseudo-label class distribution
and overlays, and a job's log; then upload an image on the predict page and see the mask.

The Ray head, the service (``selftrain serve``) and the finished run are tests/conftest.py's
session fixtures, shared with tests/test_service_e2e.py. Screenshots go to
``$SELFTRAIN_SCREENSHOT_DIR`` if set, else to a temporary folder (docs/dashboard.png and
docs/dashboard-predict.png were made that way, on purpose, not by every test run).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from service_support import LIVE_EPOCHS, LIVE_IMAGE_SIZE, TOKEN

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        CHROMIUM is None or CHROMEDRIVER is None,
        reason="needs Debian's chromium and chromium-driver (apt-get install chromium "
        "chromium-driver)",
    ),
]


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,1500",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def screenshot_dir(tmp_path_factory) -> Path:
    folder = os.environ.get("SELFTRAIN_SCREENSHOT_DIR")
    path = Path(folder) if folder else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _wait(driver, condition, timeout: float = 20.0):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(condition)


def _loaded_images(driver, selector: str) -> int:
    script = (
        "return [...document.querySelectorAll(arguments[0])]"
        ".filter(i => i.complete && i.naturalWidth > 0).length"
    )
    return driver.execute_script(script, selector)


def _shares(summary: dict) -> dict[str, str]:
    """Each class's share of the pseudo-labeled pixels as the dashboard prints it ("12.3%")."""
    pixels = summary["pixels_per_class"]
    total = sum(pixels.values()) or 1
    return {name: f"{100 * count / total:.1f}%" for name, count in pixels.items()}


def test_click_through_a_finished_run(live_service, finished_run, browser, screenshot_dir):
    from selenium.webdriver.common.by import By

    run = finished_run
    browser.get(f"{live_service.url}/#token={TOKEN}")
    run_item = f'li[data-run-id="{run["id"]}"]'
    item = _wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, run_item))
    assert "synthetic-demo" in item.text and "3/3 stages" in item.text
    assert "token" not in browser.current_url  # the token left the address bar
    item.click()

    def stage_rows(d):
        return d.find_elements(By.CSS_SELECTOR, "#stages tr[data-stage]") or None

    rows = _wait(browser, stage_rows)
    assert [r.get_attribute("data-stage") for r in rows] == ["teacher", "label-0", "student"]
    assert [r.find_element(By.CSS_SELECTOR, ".status").text for r in rows] == ["SUCCEEDED"] * 3
    # What each training stage trains on, the ratio the paper's way (pseudo samples per real one).
    kinds = [r.find_elements(By.TAG_NAME, "td")[1].text for r in rows]
    assert kinds == ["teacher labeled only", "label", "student pseudo:real 1:1, centroid sampling"]
    # The ids Ray ran the jobs under (test_service_e2e asks Ray about the same ids).
    shown_ids = [r.find_element(By.TAG_NAME, "code").text for r in rows]
    stages = ["teacher", "label-0", "student"]
    assert shown_ids == [f"selftrain-{run['id']}-{i}-{name}" for i, name in enumerate(stages)]

    # Loss, val mIoU and crop size for each trained stage, one point per epoch the job reported.
    charts = browser.find_elements(By.CSS_SELECTOR, "svg.chart")
    assert len(charts) == 6
    assert [len(c.find_elements(By.CSS_SELECTOR, "circle")) for c in charts] == [LIVE_EPOCHS] * 6
    teacher_losses = [m["loss"] for m in run["stages"][0]["metrics"]]
    assert len(teacher_losses) == LIVE_EPOCHS and all(loss > 0 for loss in teacher_losses)

    # The class distribution the teacher's pseudo labels have, as the label store counted it.
    summary = run["stages"][1]["summary"]
    grid = browser.find_element(By.CSS_SELECTOR, '[data-card="label-0"] .classes').text
    top_class, top_share = max(_shares(summary).items(), key=lambda kv: float(kv[1][:-1]))
    assert f"{top_class}\n" in grid and top_share in grid
    # Up to four images beside their pseudo-label overlays, decoded by the browser.
    assert _wait(browser, lambda d: _loaded_images(d, ".samples img") == 8)

    # Each stage links to its MLflow run in the configured UI.
    links = [r.find_element(By.CSS_SELECTOR, "a[data-mlflow]") for r in rows]
    assert [a.get_attribute("href") for a in links] == [s["tracking"]["url"] for s in run["stages"]]

    browser.find_element(By.CSS_SELECTOR, 'tr[data-stage="teacher"] button').click()
    logs = _wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, "pre.logs"))
    assert f"Running entrypoint for job {shown_ids[0]}" in logs.text
    browser.execute_script("window.scrollTo(0, 0)")
    assert browser.save_screenshot(str(screenshot_dir / "dashboard.png"))


def test_review_view_shows_the_least_certain_pseudo_labels_first(
    live_service, finished_run, browser, screenshot_dir
):
    """The label stage's card lists the images with the lowest mean confidence first, each as
    image, pseudo label and confidence heat map, and a confidence histogram per class."""
    from selenium.webdriver.common.by import By

    run = finished_run
    review = live_service.json("GET", f"/api/runs/{run['id']}/stages/label-0/review?n=4")
    assert review["n_done"] == 8 and len(review["indices"]) == 4
    assert review["mean_confidence"] == sorted(review["mean_confidence"])
    browser.get(f"{live_service.url}/#token={TOKEN}")
    item = _wait(
        browser, lambda d: d.find_element(By.CSS_SELECTOR, f'li[data-run-id="{run["id"]}"]')
    )
    item.click()
    _wait(browser, lambda d: _loaded_images(d, ".review-row img") == 12)
    rows = browser.find_elements(By.CSS_SELECTOR, ".review-row")
    assert [int(r.get_attribute("data-index")) for r in rows] == review["indices"]
    assert f"mean confidence {100 * review['mean_confidence'][0]:.1f} %" in rows[0].text
    shown = [
        h.get_attribute("data-class") for h in browser.find_elements(By.CSS_SELECTOR, ".histogram")
    ]
    assert shown == list(review["histograms"])
    # Bars are drawn (the page's CSP refuses style attributes; sizes are set through CSSOM): each
    # histogram's fullest bin fills its 28 px.
    for histogram in browser.find_elements(By.CSS_SELECTOR, ".histogram"):
        heights = [bar.size["height"] for bar in histogram.find_elements(By.TAG_NAME, "i")]
        assert max(heights) == 28, heights
    browser.execute_script("document.querySelector('.review').scrollIntoView()")
    assert browser.save_screenshot(str(screenshot_dir / "dashboard-review.png"))


def test_predict_page_shows_the_mask(live_service, finished_run, browser, screenshot_dir):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    image = next((live_service.root / "data" / "labeled" / "leftImg8bit").rglob("*.png"))
    browser.get(f"{live_service.url}/#token={TOKEN}")
    browser.get(f"{live_service.url}/#predict")
    _wait(browser, lambda d: d.find_element(By.ID, "predict-page").is_displayed())
    select = Select(_wait(browser, lambda d: d.find_element(By.ID, "predict-run")))

    def lists_the_run(d) -> bool:
        return finished_run["id"] in [o.get_attribute("value") for o in select.options]

    _wait(browser, lists_the_run)
    select.select_by_value(finished_run["id"])
    browser.find_element(By.ID, "predict-image").send_keys(str(image))
    browser.find_element(By.ID, "predict-button").click()
    _wait(browser, lambda d: _loaded_images(d, "#predicted") == 1, timeout=60)
    size = browser.execute_script(
        "const i = document.getElementById('predicted'); return [i.naturalHeight, i.naturalWidth]"
    )
    assert size == list(LIVE_IMAGE_SIZE)
    assert browser.find_element(By.ID, "predict-error").text == ""
    assert browser.save_screenshot(str(screenshot_dir / "dashboard-predict.png"))
