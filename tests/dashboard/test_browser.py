"""The dashboard in a real browser (headless Chromium, Debian's, through chromedriver)
against a real `edged run`: log in with the token, see every turbine, break one with a
fault button and see it turn anomalous and clear, stop and start one, page through
1,000 turbines on a phone-sized screen."""

from __future__ import annotations

from pathlib import Path

import pytest
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.support import EdgedProcess
from tests.support.browser import headless_chromium
from tests.support.farms import faulty_farm

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "browser-test-token"

pytestmark = pytest.mark.timeout(300)


def dashboard_head(token: bool) -> str:
    secret = ', token: "${EDGED_DASHBOARD_TOKEN}"' if token else ""
    return ("log: {level: info, format: json}\n"
            f'dashboard: {{listen: "127.0.0.1:0"{secret}}}\n')


async def start(tmp_path: Path, config_text: str) -> tuple[EdgedProcess, str]:
    config = tmp_path / "edged.yaml"
    config.write_text(config_text)
    daemon = EdgedProcess(config, {"EDGED_DASHBOARD_TOKEN": TOKEN}, cwd=ROOT)
    daemon.__enter__()
    try:
        listening = await daemon.wait_for("dashboard_listening", 30)
    except BaseException:
        daemon.__exit__(None, None, None)
        raise
    return daemon, f"http://127.0.0.1:{listening['port']}"


def card_state(browser, turbine: str) -> str | None:
    cards = browser.find_elements(By.CSS_SELECTOR, f'.turbine[data-turbine="{turbine}"]')
    return cards[0].get_attribute("data-state") if cards else None


def wait_until(browser, seconds: float, condition, message: str):
    # An element read between two redraws can be gone: read again at the next poll.
    return WebDriverWait(browser, seconds, poll_frequency=0.2,
                         ignored_exceptions=(StaleElementReferenceException,)).until(
        condition, message)


def click(browser, selector: str) -> None:
    # Found afresh each time: the page redraws its panels on every board event.
    wait_until(browser, 10, lambda b: b.find_elements(By.CSS_SELECTOR, selector),
               f"no {selector}")[0].click()


async def test_an_operator_breaks_and_mends_a_turbine_from_the_page(tmp_path):
    text = faulty_farm(tmp_path / "state", device="browser-gw", turbines=5, faults="",
                       head=dashboard_head(token=True), stale_after_s=2)
    daemon, base = await start(tmp_path, text)
    with daemon, headless_chromium() as browser:
        # The token is enforced: the page asks for it, the API refuses without it.
        browser.get(base + "/api/state")
        assert "Bearer" in browser.find_element(By.TAG_NAME, "body").text
        browser.get(base + "/")
        assert browser.current_url == base + "/login"
        field = browser.find_element(By.CSS_SELECTOR, "#login input[name=token]")
        field.send_keys("not-the-token")
        field.submit()
        assert "not the token" in browser.find_element(By.ID, "login-error").text
        field = browser.find_element(By.CSS_SELECTOR, "#login input[name=token]")
        field.send_keys(TOKEN)
        field.submit()
        assert browser.current_url == base + "/"

        # Every turbine, live, all healthy once scored.
        wait_until(browser, 30, lambda b: b.find_element(By.ID, "conn").text == "live",
                   "the stream never went live")
        wait_until(browser, 30, lambda b: [card_state(b, f"turbine-{i}") for i in range(5)]
                   == ["ok"] * 5, "five healthy turbines")
        assert browser.find_element(By.ID, "page-info").text == "1–5 of 5"
        assert browser.find_element(By.CSS_SELECTOR, '[data-count="turbines"]').text == "5"

        # A fault button breaks turbine-3 within seconds; pressed again, it mends.
        click(browser, '.turbine[data-turbine="turbine-3"]')
        wait_until(browser, 10, lambda b: b.find_element(By.ID, "focus").is_displayed(),
                   "the focus panel")
        click(browser, '#focus button[data-fault="vibration"]')
        wait_until(browser, 20, lambda b: card_state(b, "turbine-3") == "anomaly",
                   "turbine-3 never turned anomalous")
        assert card_state(browser, "turbine-2") == "ok"
        flag = browser.find_element(
            By.CSS_SELECTOR, '.turbine[data-turbine="turbine-3"] .flag[data-group="vibration"]')
        assert "on" in flag.get_attribute("class")
        assert browser.find_element(
            By.CSS_SELECTOR, '#focus button[data-fault="vibration"]').get_attribute(
                "aria-pressed") == "true"
        wait_until(browser, 20, lambda b: "turbine-3" in b.find_element(
            By.ID, "alarm-list").text, "the alarm in the recent alarms")
        click(browser, '#focus button[data-fault="vibration"]')
        # Clear once the faulty rows have left the windows the model scores.
        wait_until(browser, 60, lambda b: card_state(b, "turbine-3") == "ok",
                   "turbine-3 never cleared")

        # Stopped, it goes stale; started again, it is scored again.
        click(browser, '#focus button[data-control="running"]')
        wait_until(browser, 20, lambda b: card_state(b, "turbine-3") == "stale",
                   "a stopped turbine never went stale")
        click(browser, '#focus button[data-control="running"]')
        wait_until(browser, 20, lambda b: card_state(b, "turbine-3") == "ok",
                   "a started turbine never came back")

    controls = daemon.events("dashboard_control")
    assert [(c["what"], c.get("kind"), c["on"]) for c in controls] == [
        ("fault", "vibration", True), ("fault", "vibration", False),
        ("running", None, False), ("running", None, True)]


async def test_a_thousand_turbines_on_a_phone(tmp_path):
    # Two rows a second each: the daemon decides 1,000 turbines on CI's two cores
    # beside the browser (the decision rate with the page open is a benchmark).
    text = faulty_farm(tmp_path / "state", device="phone-gw", turbines=1000,
                       faults="7:voltage@0-600,420:rotation@0-600", rate_hz=2,
                       interval_s=1, stale_after_s=30, head=dashboard_head(token=False))
    daemon, base = await start(tmp_path, text)
    with daemon, headless_chromium(390, 844, phone=True) as browser:
        browser.get(base + "/")
        wait_until(browser, 60, lambda b: b.find_element(By.ID, "page-info").text
                   == "1–60 of 1000", "the first page of 1,000")
        assert len(browser.find_elements(By.CSS_SELECTOR, ".turbine")) == 60
        # Nothing wider than the phone: the grid wraps, the page never scrolls sideways.
        assert browser.execute_script("return window.innerWidth") == 390
        assert browser.execute_script(
            "return document.documentElement.scrollWidth <= window.innerWidth")

        click(browser, "#next")
        wait_until(browser, 20, lambda b: b.find_element(By.ID, "page-info").text
                   == "61–120 of 1000", "the second page")
        # In name order, numbers as numbers: turbine-9 comes before turbine-10.
        names = [c.get_attribute("data-turbine")
                 for c in browser.find_elements(By.CSS_SELECTOR, ".turbine")]
        assert names == [f"turbine-{i}" for i in range(60, 120)]

        # The anomaly chip shows just the two broken turbines, wherever they are.
        wait_until(browser, 60, lambda b: b.find_element(
            By.CSS_SELECTOR, '[data-count="anomaly"]').text == "2", "two anomalies counted")
        click(browser, '.chip[data-filter="anomaly"]')
        wait_until(browser, 20, lambda b: sorted(
            c.get_attribute("data-turbine")
            for c in b.find_elements(By.CSS_SELECTOR, ".turbine")) == [
                "turbine-420", "turbine-7"], "the anomalous turbines, filtered")
        assert browser.find_element(By.ID, "page-info").text == "1–2 of 2"
