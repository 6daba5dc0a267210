"""The dashboard in a real headless Chromium (Debian's ``chromium`` + ``chromium-driver``, driven by
selenium): sign in, open a finished run, see its stages, charts, class distribution, pseudo-label
overlays and logs, then upload an image on the predict page and see the mask. Leaves screenshots in
docs/ (dashboard.png, dashboard-predict.png).

The run is finished by a job backend in memory whose jobs write real artifacts at once (a checkpoint
of the "small" model, metrics, a label store), served by uvicorn on a free local port.
"""

from __future__ import annotations

import shutil
import socket
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn
from test_service_helpers import (
    AUTH,
    TOKEN,
    SucceedingBackend,
    make_settings,
    small_run_spec,
    write_scenes,
)

from services.app import create_app

REPO = Path(__file__).resolve().parents[1]
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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The service on a free port, with one finished run; yields (base url, run id, image path)."""
    root = tmp_path_factory.mktemp("dashboard")
    data = root / "data"
    images = write_scenes(data / "labeled", n=4, size=(96, 192))
    write_scenes(data / "unlabeled", n=4, size=(96, 192), split="extra")
    settings = make_settings(root, poll_interval_s=0.2)
    app = create_app(settings, SucceedingBackend())
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    spec = small_run_spec(data)
    spec["name"] = "synthetic-demo"
    spec["label"]["sources"][0]["root"] = str(data / "unlabeled" / "leftImg8bit")
    for stage in ("teacher", "student"):
        spec[stage]["train"] = {**spec[stage]["train"], "epochs": 8}
    try:
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.1)
        client = httpx.Client(base_url=url, headers=AUTH, timeout=60)
        run_id = client.post("/api/runs", json=spec).raise_for_status().json()["id"]
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            run = client.get(f"/api/runs/{run_id}").json()
            if run["status"] == "SUCCEEDED":
                break
            time.sleep(0.2)
        assert run["status"] == "SUCCEEDED", run
        yield url, run_id, images[0]
    finally:
        server.should_exit = True
        thread.join(timeout=10)


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


def _wait(driver, condition, timeout: float = 20.0):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(condition)


def _loaded_images(driver, selector: str) -> int:
    script = (
        "return [...document.querySelectorAll(arguments[0])]"
        ".filter(i => i.complete && i.naturalWidth > 0).length"
    )
    return driver.execute_script(script, selector)


def test_click_through_a_finished_run(server, browser):
    from selenium.webdriver.common.by import By

    url, run_id, _ = server
    browser.get(f"{url}/#token={TOKEN}")
    item = _wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, f'li[data-run-id="{run_id}"]'))
    assert "synthetic-demo" in item.text and "3/3 stages" in item.text
    assert "token" not in browser.current_url  # the token left the address bar
    item.click()

    def stage_statuses(d):
        rows = d.find_elements(By.CSS_SELECTOR, "#stages tr[data-stage]")
        return [r.find_element(By.CSS_SELECTOR, ".status").text for r in rows] or None

    assert _wait(browser, stage_statuses) == ["SUCCEEDED"] * 3
    names = [
        r.get_attribute("data-stage")
        for r in browser.find_elements(By.CSS_SELECTOR, "#stages tr[data-stage]")
    ]
    assert names == ["teacher", "label-0", "student"]
    # Three charts (loss, val mIoU, crop size) for each trained stage, 8 epochs each.
    charts = browser.find_elements(By.CSS_SELECTOR, "svg.chart")
    assert len(charts) == 6
    assert len(charts[0].find_elements(By.CSS_SELECTOR, "circle")) == 8
    # The class distribution: the store labels half of every image road, half sky.
    grid = browser.find_element(By.CSS_SELECTOR, '[data-card="label-0"] .classes').text
    assert "road\n" in grid and "50.0%" in grid
    # Four images beside their pseudo-label overlays.
    assert _wait(browser, lambda d: _loaded_images(d, ".samples img") == 8)

    teacher_row = browser.find_element(By.CSS_SELECTOR, 'tr[data-stage="teacher"]')
    teacher_row.find_element(By.TAG_NAME, "button").click()
    logs = _wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, "pre.logs"))
    assert "Running entrypoint for job selftrain-" in logs.text
    browser.execute_script("window.scrollTo(0, 0)")
    (REPO / "docs").mkdir(exist_ok=True)
    assert browser.save_screenshot(str(REPO / "docs" / "dashboard.png"))


def test_predict_page_shows_the_mask(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    url, run_id, image = server
    browser.get(f"{url}/#predict")
    _wait(browser, lambda d: d.find_element(By.ID, "predict-page").is_displayed())
    select = Select(_wait(browser, lambda d: d.find_element(By.ID, "predict-run")))
    _wait(browser, lambda d: len(select.options) > 0)
    select.select_by_value(run_id)
    browser.find_element(By.ID, "predict-image").send_keys(str(image))
    browser.find_element(By.ID, "predict-button").click()
    _wait(browser, lambda d: _loaded_images(d, "#predicted") == 1)
    size = browser.execute_script(
        "const i = document.getElementById('predicted'); return [i.naturalHeight, i.naturalWidth]"
    )
    assert size == [96, 192]
    assert browser.find_element(By.ID, "predict-error").text == ""
    assert browser.save_screenshot(str(REPO / "docs" / "dashboard-predict.png"))
    assert np.prod(size) > 0
