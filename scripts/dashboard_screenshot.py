"""Screenshots of the dashboard for docs/ and the README: `edged demo --dashboard` in
headless Chromium, on a desktop and on a phone, while the demo's faults are on.

    .venv/bin/python scripts/dashboard_screenshot.py   # writes docs/dashboard*.png
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from selenium.webdriver.common.by import By  # noqa: E402

from tests.support.browser import headless_chromium  # noqa: E402

#: Seconds into the demo: turbine-3's rotation fault is on, turbine-2's just ended.
AT_S = 10.0


def main() -> None:
    demo = subprocess.Popen(
        [str(ROOT / ".venv/bin/edged"), "demo", "--dashboard", "127.0.0.1:0",
         "--turbines", "24", "--duration", "40"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert demo.stdout is not None
        for line in demo.stdout:
            if match := re.match(r"dashboard: (\S+)", line):
                address, started = match.group(1), time.monotonic()
                break
        else:
            raise SystemExit("the demo printed no dashboard address")
        with headless_chromium(1100, 1300) as browser:
            browser.get(address)
            time.sleep(max(0.0, AT_S - (time.monotonic() - started)))
            browser.find_element(By.CSS_SELECTOR, '.turbine[data-turbine="turbine-3"]').click()
            time.sleep(2.5)  # the focus stream's first board, and one more
            browser.save_screenshot(str(ROOT / "docs/dashboard.png"))
        with headless_chromium(390, 844, phone=True) as phone:
            phone.get(address)
            time.sleep(2.5)
            phone.save_screenshot(str(ROOT / "docs/dashboard-phone.png"))
    finally:
        demo.terminate()
        demo.wait(10)
    print("wrote docs/dashboard.png and docs/dashboard-phone.png")


if __name__ == "__main__":
    main()
