"""The dashboard in a real browser: Debian's headless Chromium driven by Selenium through
Debian's chromium-driver (the same build), against a real cluster on 127.0.0.1.

One cluster for the module and one autoscaled service ``live`` (the ``slow`` script, 200 ms
a request, at most 3 replicas). Load is six clients for at most 60 s, to 127.0.0.1 only.
Screenshots of the overview and of the service under load go to the test's folder, and also
to ``$MODELFLEET_DASHBOARD_SCREENSHOTS`` when that names a folder (how docs/ gets them).
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from dashboard_support import base_uri, login_link

from e2e_support import deploy, register_json_model, stop_cluster
from modelfleet import Webservice, Workspace
from modelfleet.control.dashboard.login import COOKIE

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import NoAlertPresentException, StaleElementReferenceException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1100",
)
SERVICE = "live"
SETTINGS = {
    "num_replicas": None,
    "autoscale_enabled": True,
    "autoscale_min_replicas": 1,
    "autoscale_max_replicas": 3,
    "autoscale_down_delay_seconds": 600,  # stays scaled up while the page is looked at
    "max_request_wait_time": 10000,
    "auth_enabled": True,
}
WAIT_S = 60  # generous: six engineers share two cores


@pytest.fixture(scope="module", autouse=True)
def chromium_present() -> None:
    """Skip without the browser, unless CI says it must be there (MODELFLEET_BROWSER_REQUIRED=1)."""
    if CHROMIUM.exists() and CHROMEDRIVER.exists():
        return
    why = "needs Debian's chromium and chromium-driver: apt-get install -y chromium chromium-driver"
    if os.environ.get("MODELFLEET_BROWSER_REQUIRED") == "1":
        pytest.fail(why)
    pytest.skip(why)


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workspace]:
    workspace = Workspace.create("browser", tmp_path_factory.mktemp("ws"))
    register_json_model(workspace, tmp_path_factory.mktemp("model"), "weights", 2.0)
    deploy(workspace, SERVICE, "slow", **SETTINGS)
    yield workspace
    stop_cluster(workspace)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    # an explicit driver path: Selenium Manager is never asked to download anything
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


class Load:
    """``clients`` threads scoring back to back (at most ``limit_s`` seconds) until stopped."""

    def __init__(self, service: Webservice, clients: int, limit_s: float = 60.0) -> None:
        self.uri = service.scoring_uri
        self.key = service.get_keys()[0]
        self.clients = clients
        self.deadline = time.monotonic() + limit_s
        self.statuses: list[int] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client) for _ in range(clients)]

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)

    def _client(self) -> None:
        headers = {"Authorization": f"Bearer {self.key}"}
        with httpx.Client(timeout=30.0) as http:
            while not self._stop.is_set() and time.monotonic() < self.deadline:
                answer = http.post(self.uri, content=b'{"sleep": 0.2}', headers=headers)
                self.statuses.append(answer.status_code)


def wait_for(driver: webdriver.Chrome, condition, timeout: float = WAIT_S):  # type: ignore[no-untyped-def]
    # the page redraws its tables each second, so an element found may be replaced before use
    wait = WebDriverWait(driver, timeout, poll_frequency=0.25, ignored_exceptions=(StaleElementReferenceException,))
    return wait.until(lambda d: condition(d))


def text_of(driver: webdriver.Chrome, css: str) -> str | None:
    """The text of the first element ``css`` selects, read in one step (no stale reference)."""
    script = "const e = document.querySelector(arguments[0]); return e ? e.textContent.trim() : null;"
    return driver.execute_script(script, css)  # type: ignore[no-any-return]


def click(driver: webdriver.Chrome, css: str) -> None:
    """Click the element ``css`` selects, again if it was redrawn in between."""

    def clicked(d: webdriver.Chrome) -> bool:
        d.find_element(By.CSS_SELECTOR, css).click()
        return True

    wait_for(driver, clicked, timeout=10)


def screenshot(driver: webdriver.Chrome, folder: Path, name: str) -> Path:
    path = folder / name
    assert driver.save_screenshot(str(path))
    extra = os.environ.get("MODELFLEET_DASHBOARD_SCREENSHOTS")
    if extra:
        shutil.copy(path, Path(extra) / name)
    return path


def test_refused_without_the_cookie_and_with_a_forged_one(ws: Workspace, browser: webdriver.Chrome) -> None:
    base = base_uri(login_link(ws))
    browser.delete_all_cookies()
    browser.get(base + "/")
    assert "not logged in" in browser.find_element(By.TAG_NAME, "body").text
    browser.add_cookie({"name": COOKIE, "value": "forged-session-id", "path": "/"})
    browser.get(base + "/")
    assert "not logged in" in browser.find_element(By.TAG_NAME, "body").text
    assert not browser.find_elements(By.ID, "services")


def test_log_in_see_the_service_and_watch_it_scale_under_load(
    ws: Workspace, browser: webdriver.Chrome, tmp_path: Path
) -> None:
    link = login_link(ws)
    browser.delete_all_cookies()
    browser.get(link)
    wait_for(browser, lambda d: "/login" not in d.current_url)  # redirected to the page
    assert "code=" not in browser.current_url  # the code left the address bar
    cookie = browser.get_cookie(COOKIE)
    assert cookie is not None and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    row = f'#services tr[data-service="{SERVICE}"]'
    wait_for(browser, lambda d: text_of(d, row + " td.replicas") == "1/1")
    assert text_of(browser, row + " td.state") == "Healthy"
    assert text_of(browser, row + " td.rps") == "0.00"
    wait_for(browser, lambda d: "on" in d.find_element(By.ID, "live").get_attribute("class"))

    deploy(ws, "appears", "sum", wait=False, auth_enabled=False)  # deployed while the page is open
    wait_for(browser, lambda d: text_of(d, '#services tr[data-service="appears"] td.state') == "Healthy")

    with Load(Webservice(ws, SERVICE), clients=6) as load:
        # the page updates itself from the event stream: no reload from here on
        wait_for(browser, lambda d: float(text_of(d, row + " td.rps") or 0) > 0)
        wait_for(browser, lambda d: int((text_of(d, row + " td.replicas") or "0/0").split("/")[1]) > 1)

        click(browser, row + " td.name a")
        wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#chart-replicas canvas"))
        wait_for(browser, lambda d: float(text_of(d, "#service-rps") or 0) > 0)
        wait_for(browser, lambda d: int((text_of(d, "#service-replicas") or "0/0").split("/")[0]) > 1)
        up = "#chart-replicas .scale-marker.up"
        wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, up))
        title = browser.execute_script("return document.querySelector(arguments[0]).title;", up)  # the hover text
        assert "1 → " in title and "utilization" in title
        click(browser, "#replica-table a.log-link")  # a replica's live log
        wait_for(browser, lambda d: (text_of(d, "#log-title") or "").endswith("(live)") and text_of(d, "#log-text"))
        # a few more points on the charts before the picture (longer when it is for docs/)
        time.sleep(20 if os.environ.get("MODELFLEET_DASHBOARD_SCREENSHOTS") else 2)
        screenshot(browser, tmp_path, "dashboard-service.png")

        click(browser, "header nav a[href='#/']")
        wait_for(browser, lambda d: (text_of(d, row + " td.replicas") or "").split("/") in (["2", "2"], ["3", "3"]))
        screenshot(browser, tmp_path, "dashboard-overview.png")
    assert load.statuses and set(load.statuses) == {200}


def test_regenerate_key_button_asks_then_acts(ws: Workspace, browser: webdriver.Chrome) -> None:
    service = Webservice(ws, SERVICE)
    old = service.get_keys()[1]
    open_service_page(ws, browser)
    click(browser, "#key-select option:nth-child(2)")  # Secondary
    assert browser.execute_script("return document.getElementById('key-select').value;") == "Secondary"
    click(browser, "#regen-key")
    alert = wait_for(browser, lambda d: _alert(d), timeout=10)
    assert "Regenerate the Secondary key" in alert.text
    alert.accept()
    wait_for(browser, lambda d: (text_of(d, "#notice") or "") == "Secondary key regenerated")
    assert service.get_keys()[1] != old


def test_set_replicas_says_it_sets_the_autoscale_bounds_and_cancel_changes_nothing(
    ws: Workspace, browser: webdriver.Chrome
) -> None:
    before = Webservice(ws, SERVICE)._spec().autoscale
    open_service_page(ws, browser)
    browser.execute_script("document.getElementById('replicas-input').value = '2';")
    click(browser, "#set-replicas")
    alert = wait_for(browser, lambda d: _alert(d), timeout=10)
    assert "Autoscaling is on: this sets its minimum and maximum to 2" in alert.text
    alert.dismiss()
    assert Webservice(ws, SERVICE)._spec().autoscale == before


def test_environments_and_models_page(ws: Workspace, browser: webdriver.Chrome) -> None:
    link = login_link(ws)
    browser.get(link)
    wait_for(browser, lambda d: "/login" not in d.current_url)
    click(browser, "header nav a[href='#/environments']")
    wait_for(browser, lambda d: text_of(d, "#models tbody tr td") == "weights")
    assert browser.find_elements(By.CSS_SELECTOR, "#environments tbody tr")


def open_service_page(ws: Workspace, browser: webdriver.Chrome) -> None:
    link = login_link(ws)
    browser.get(link)
    wait_for(browser, lambda d: "/login" not in d.current_url)
    browser.get(base_uri(link) + f"/#/service/{SERVICE}")
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#chart-replicas canvas"))


def _alert(driver: webdriver.Chrome):  # type: ignore[no-untyped-def]
    try:
        alert = driver.switch_to.alert
        _ = alert.text
        return alert
    except NoAlertPresentException:
        return None
