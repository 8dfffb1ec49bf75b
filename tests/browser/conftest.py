"""Shared fixtures for the chat page's tests in a real browser.

scripts/browser-test.sh starts `rill serve --model smollm2 --resume-window-secs 3` and exports RILL_BASE_URL;
these tests fail, never skip, when it is missing. The browser is Debian's headless Chromium driven by Selenium
through Debian's chromedriver; it reaches rill through a cutting proxy (proxy.py), so the page's origin is the
proxy's. Screenshots go to RILL_BROWSER_OUT (default target/browser-test).
"""

import json
import os
import time
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from proxy import Proxy

ROOT = Path(__file__).resolve().parents[2]
MODEL = os.environ.get("RILL_MODEL_NAME", "smollm2")
OUT = Path(os.environ.get("RILL_BROWSER_OUT", ROOT / "target" / "browser-test"))
# Every wait is bounded.
TIMEOUT = 90.0


def base_url() -> str:
    url = os.environ.get("RILL_BASE_URL")
    if not url:
        raise RuntimeError("RILL_BASE_URL is not set: run these tests through scripts/browser-test.sh")
    return url.rstrip("/")


@pytest.fixture(scope="session")
def base() -> str:
    return base_url()


@pytest.fixture(scope="session")
def proxy(base):
    u = urlparse(base)
    p = Proxy(u.hostname, u.port)
    yield p
    p.close()


@pytest.fixture(scope="session")
def out() -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    return OUT


@pytest.fixture(scope="session")
def driver():
    opts = webdriver.ChromeOptions()
    opts.binary_location = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1100,900", "--no-first-run", "--disable-extensions",
                "--disable-background-networking", "--disable-component-update"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    service = Service(executable_path=os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver"))
    d = webdriver.Chrome(options=opts, service=service)
    d.set_page_load_timeout(TIMEOUT)
    yield d
    d.quit()


def wait(driver, cond, timeout=TIMEOUT, msg=""):
    return WebDriverWait(driver, timeout, poll_frequency=0.02).until(lambda d: cond(d), msg)


def metric(base: str, name: str) -> float:
    text = httpx.get(f"{base}/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {name} in /metrics")


def requested_urls(driver):
    """Every URL the page asked for since the last call (from Chromium's performance log)."""
    urls = []
    for entry in driver.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        if msg.get("method") == "Network.requestWillBeSent":
            urls.append(msg["params"]["request"]["url"])
    return urls


def by_css(driver, css):
    return driver.find_elements(By.CSS_SELECTOR, css)


def poll(cond, timeout=TIMEOUT, every=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(every)
    return cond()
