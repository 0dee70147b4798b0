"""Screenshots of the dashboard on the demo fleet, for docs/dashboard.md (no test asserts here).

    .venv/bin/python scripts/dashboard_screenshots.py [--wait 35]

Runs `edgeagent demo --keep` (its private mosquitto has a websockets listener), serves the
dashboard in this process, drives Debian's headless chromium through a call, writes
docs/img/dashboard-demo.png and docs/img/dashboard-demo-model.png, then stops the demo (SIGTERM).
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

from edgeagent.bridges.dashboard import DashboardServer
from edgeagent.bridges.dashboard_config import PageConfig
from edgeagent.demo import DIGIT_THREE

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "img"


def start_demo() -> tuple[subprocess.Popen[str], str]:
    """`demo --keep` until it prints its commands; the ws:// URL of its dashboard command."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgeagent.cli", "demo", "--keep"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    out = ""
    deadline = time.monotonic() + 120
    while "stops the fleet" not in out and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        out += line
    found = re.search(r"dashboard --ws-url (ws://\S+)", out)
    if found is None:
        proc.kill()
        raise SystemExit(f"demo --keep printed no dashboard command:\n{out}")
    return proc, found[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wait", type=float, default=35.0, help="Seconds of health to collect.")
    args = parser.parse_args()
    demo, ws_url = start_demo()
    try:
        page_cfg = PageConfig(ws_url=ws_url, fleet="home", root="edgeagent", report=False)
        with DashboardServer(page_cfg, port=0) as server, sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path="/usr/bin/chromium", headless=True, args=["--no-sandbox"]
            )
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(server.url)
            page.wait_for_selector("#conn[data-state=connected]")
            page.wait_for_selector('tr[data-device="speaker-living"] .status[data-status=online]')
            page.click('tr[data-device="lamp-kitchen"] button.select')
            card = page.locator('section.skill[data-skill="set_brightness"]')
            for level in ("55", "20", "90"):
                card.locator('input[name="level"]').fill(level)
                card.locator("button.call").click()
                time.sleep(0.3)
            time.sleep(args.wait)  # health every 10 s: a few points per sparkline
            OUT.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(OUT / "dashboard-demo.png"))
            page.click('tr[data-device="meter-basement"] button.select')
            digit = page.locator('section.skill[data-skill="read_digit"]')
            digit.locator('textarea[name="pixels"]').fill(json.dumps(DIGIT_THREE))
            digit.locator("button.call").click()
            digit.locator('.reply[data-type="ok"]').wait_for()
            page.screenshot(path=str(OUT / "dashboard-demo-model.png"), full_page=True)
            browser.close()
    finally:
        demo.send_signal(signal.SIGTERM)
        try:
            demo.wait(40)
        except subprocess.TimeoutExpired:
            demo.kill()
        if demo.stdout is not None:
            demo.stdout.close()
    print(f"wrote {OUT / 'dashboard-demo.png'} and {OUT / 'dashboard-demo-model.png'}")


if __name__ == "__main__":
    main()
