"""Take the dashboard screenshots of docs/dashboard.md: a local cluster with some work
running, photographed by headless chromium (Debian's, driven by playwright).

    python docs/screenshots.py
"""

from __future__ import annotations

import os
import shutil
import time

from playwright.sync_api import sync_playwright

import aray
from aray import _global

HERE = os.path.dirname(os.path.abspath(__file__))
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@aray.remote
def simulate(step):
    time.sleep(0.2 + (step % 5) * 0.1)
    if step % 23 == 22:
        raise ValueError(f"step {step} diverged")
    return step


@aray.remote
class ParameterServer:
    def update(self, grads):
        return sum(grads)


def main() -> None:
    info = aray.init(num_cpus=2, resources={"dataset": 1}, dashboard_port=0)
    url, token = info["dashboard_url"], _global.core().token
    server = ParameterServer.options(name="parameters").remote()
    data = aray.put(bytes(50_000_000))
    refs = [simulate.remote(i) for i in range(120)]
    aray.get(server.update.remote([1, 2, 3]))
    time.sleep(12)  # some done, some running, some waiting
    browser_path = shutil.which("chromium") or shutil.which("chromium-browser")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=browser_path, args=FLAGS)
        page = browser.new_page(viewport={"width": 1200, "height": 760})
        page.goto(url + f"/?token={token}")
        page.wait_for_selector("#timeline svg")
        time.sleep(1.5)
        page.screenshot(path=os.path.join(HERE, "images", "dashboard-overview.png"))
        page.goto(url + "/#tasks")
        page.wait_for_selector("#task-rows tr td.name")
        time.sleep(1.5)
        page.screenshot(path=os.path.join(HERE, "images", "dashboard-tasks.png"))
        browser.close()
    aray.wait(refs, num_returns=len(refs))
    del data
    aray.shutdown()


if __name__ == "__main__":
    main()
