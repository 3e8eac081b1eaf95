"""Headless Chromium driven through chromedriver (Debian's ``chromium`` and
``chromium-driver``, installed with apt when missing), for the dashboard's browser test
and its screenshot::

    with headless_chromium() as browser:
        browser.get("http://127.0.0.1:8088/")
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from tests.support.debian import program

PACKAGES = ("chromium", "chromium-driver")
#: No sandbox (containers run tests as root), no GPU, nothing fetched from Google.
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage")


@contextmanager
def headless_chromium(width: int = 1280, height: int = 900,
                      phone: bool = False) -> Iterator[webdriver.Chrome]:
    """A browser with a ``width`` x ``height`` viewport; ``phone``: as a phone shows a
    page (touch, a device pixel ratio of 3), at any width (a window cannot be narrower
    than 500 pixels)."""
    options = webdriver.ChromeOptions()
    options.binary_location = program("chromium", PACKAGES, ("/usr/bin/chromium",))
    for flag in (*FLAGS, f"--window-size={max(width, 500)},{height}"):
        options.add_argument(flag)
    if phone:
        options.add_experimental_option("mobileEmulation", {"deviceMetrics": {
            "width": width, "height": height, "pixelRatio": 3.0, "touch": True}})
    service = Service(executable_path=program("chromedriver", PACKAGES,
                                              ("/usr/bin/chromedriver",)))
    browser = webdriver.Chrome(options=options, service=service)
    try:
        yield browser
    finally:
        browser.quit()
