"""Notebook 03 in a real browser: JupyterLab in headless Chromium (Debian's), driven by Playwright.

Runs the whole notebook through JupyterLab's own "Run All Cells", checks that the playground widgets rendered
and produced an answer, clicks "Ask" once more, and saves a screenshot as a test artifact under
``runs/test-artifacts/``. ``make test`` installs Chromium (``apt-get install chromium``) before the suite runs.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from helpers.store import REPO_ROOT

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = REPO_ROOT / "runs" / "test-artifacts"
# Flags a root, offline, headless Chromium needs here: no sandbox as root, no background calls to Google.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]

pytestmark = pytest.mark.browser

# In the page: "answer" once a playground answer with its timing line is shown below at least `earlier` earlier
# questions of the chat (so a finished first turn is not taken for the follow-up the same cell asks next), the
# error text once a cell has failed (JupyterLab then stops "Run All"), otherwise false (keep waiting).
ANSWER_OR_ERROR = """(earlier) => {
    const failed = document.querySelector("[data-mime-type='application/vnd.jupyter.error']");
    if (failed) return "error: " + failed.innerText.slice(-1500);
    const answers = [...document.querySelectorAll('.vlm-answer')];
    const asked = e => (e.innerText.match(/^You:/gm) || []).length;
    return answers.some(e => e.innerText.includes('tokens/s') && asked(e) >= earlier) ? "answer" : false;
}"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def jupyterlab(tmp_path):
    """A JupyterLab server on localhost serving a copy of notebook 03 (so the committed file stays clean)."""
    if not Path(CHROMIUM).exists():
        message = "Debian's chromium is not installed: run `make test` (it installs it) or `apt-get install chromium`"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    work = tmp_path / "lab"
    work.mkdir()
    shutil.copy(REPO_ROOT / "notebooks" / "03_infer.ipynb", work / "03_infer.ipynb")
    # Settings and workspaces of our own: nothing from the user's JupyterLab state leaks in, no news toast.
    settings = tmp_path / "lab-settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text('{"fetchNews": "false"}')
    port, token = _free_port(), secrets.token_hex(16)
    log = open(tmp_path / "jupyterlab.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
         f"--ServerApp.token={token}", f"--ServerApp.root_dir={work}", "--allow-root",
         f"--LabApp.user_settings_dir={tmp_path / 'lab-settings'}",
         f"--LabApp.workspaces_dir={tmp_path / 'lab-workspaces'}"],
        stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, VLM_MODEL=os.environ.get("VLM_MODEL", "synthetic-tiny")),
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
            break
        except OSError:
            if server.poll() is not None:
                raise RuntimeError(f"JupyterLab exited: {(tmp_path / 'jupyterlab.log').read_text()[-2000:]}")
            time.sleep(0.5)
    else:
        server.kill()
        raise RuntimeError("JupyterLab did not start within 120 s")
    yield f"{url}/lab/tree/03_infer.ipynb?token={token}"
    server.terminate()
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.kill()
    log.close()


def test_notebook_03_playground_answers_in_a_real_browser(jupyterlab, tmp_path):
    from playwright.sync_api import TimeoutError as PlaywrightTimeoutError
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        try:
            page.goto(jupyterlab, wait_until="domcontentloaded", timeout=120_000)
            page.wait_for_selector(".jp-Notebook", timeout=120_000)
            page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=120_000)
            select_kernel = page.locator(".jp-Dialog").get_by_role("button", name="Select", exact=True)
            try:  # JupyterLab asks when it can't tell which kernel to start; answer with the notebook's own
                select_kernel.first.click(timeout=3_000)
            except PlaywrightTimeoutError:
                pass
            page.get_by_role("menuitem", name="Run", exact=True).click()
            page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
            # The notebook asks the playground a question and a follow-up itself; wait for the follow-up's
            # answer with its timing line, or fail at once with the error of the first cell that failed.
            outcome = page.wait_for_function(ANSWER_OR_ERROR, arg=1, timeout=900_000).json_value()
            assert outcome == "answer", f"notebook 03 failed in the browser: {outcome}"
            # the answer with its timing line; its text content, since JupyterLab skips rendering cells scrolled out
            # of view (Run All ends at the last cell), and their innerText is then empty
            answer = page.locator(".vlm-answer", has_text="tokens/s").last
            assert "time to first token" in answer.text_content()
            # Now as a person would: click Ask and see a fresh answer arrive.
            answer.evaluate("e => { e.innerText = ''; }")
            ask = page.locator("button", has_text="Ask").first
            ask.scroll_into_view_if_needed()
            ask.click()
            outcome = page.wait_for_function(ANSWER_OR_ERROR, arg=2, timeout=300_000).json_value()
            assert outcome == "answer", f"the playground failed after a click on Ask: {outcome}"
            page.locator(".vlm-answer", has_text="tokens/s").last.scroll_into_view_if_needed()
            assert page.locator(".vlm-status").count() >= 1
            assert page.evaluate(ANSWER_OR_ERROR, 2) == "answer"
        finally:
            page.screenshot(path=str(ARTIFACTS / "browser-03-playground.png"), full_page=False)
            browser.close()
    assert (ARTIFACTS / "browser-03-playground.png").stat().st_size > 10_000
