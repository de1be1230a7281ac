"""The status page read by a real browser (Debian's Chromium, headless) from a whole running node.

Chromium is driven directly (``--dump-dom``, ``--screenshot``): the page
needs no script and no clicks, so no WebDriver is needed.  Skipped, saying
so, when Chromium is not installed.
"""

from __future__ import annotations

import html
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from pipeline_support import stack_env

from coda_bridge.devtools.stack import LocalStack, wait_until

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        CHROMIUM is None, reason="chromium is not installed (apt-get install chromium): no browser to test in"
    ),
]

#: One headless Chromium run (start, load, dump) on a busy machine.
BROWSER_TIMEOUT_SEC = 90


@pytest.fixture(scope="module")
def page_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """A whole node with its probes app (bound to 127.0.0.1, so the page needs no password)."""
    workdir = tmp_path_factory.mktemp("status-page-stack")
    env = stack_env(
        workdir,
        CODA_SHUTDOWN_DRAIN_TIMEOUT_SEC="2",
        CODA_STREAM_BLOCK_MS="500",
        CODA_READY_STREAM_STALE_SEC="3",
    )
    with LocalStack(workdir, env=env, web=True) as node:
        wait_until(lambda: _ready(node), 90, "the node to be ready")
        yield node


def _ready(stack: LocalStack) -> bool:
    try:
        return requests.get(f"http://127.0.0.1:{stack.web_port}/ready", timeout=5).ok
    except requests.RequestException:
        return False


def chromium(profile: Path, *args: str) -> str:
    """Run headless Chromium once (its own profile directory) and return what it printed."""
    done = subprocess.run(
        [CHROMIUM or "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=BROWSER_TIMEOUT_SEC,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def element_text(dom: str, element_id: str) -> str | None:
    """The text of the element with ``element_id`` in the DOM Chromium built, tags dropped."""
    match = re.search(rf'id="{element_id}"[^>]*>(.*?)</(td|p|q)>', dom, re.S)
    if not match:
        return None
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", match.group(1))).split())


def test_the_page_in_chromium_shows_the_pause_with_its_note_then_the_node_running(
    page_stack: LocalStack, tmp_path: Path
) -> None:
    stack = page_stack
    url = f"http://127.0.0.1:{stack.web_port}/status/"
    profile = tmp_path / "chromium-profile"

    def state_in_browser() -> str | None:
        return element_text(chromium(profile, "--dump-dom", url), "state")

    # given a running node the browser shows ready
    assert wait_until(lambda: state_in_browser() == "Ready: taking jobs", 60, "the page to show ready")

    # when the operator pauses it for 5 minutes with a note
    done = stack.command("pause", "--for", "5m", "--note", "fridge warm-up")
    assert done.returncode == 0, done.stderr

    # then the page, as Chromium renders it, shows the node paused, the note and the end
    dom = chromium(profile, "--dump-dom", url)
    state = element_text(dom, "state")
    assert state is not None and state.startswith("Not ready: the node is paused until ")
    assert state.endswith(": fridge warm-up"), state
    assert element_text(dom, "pause-note") == "fridge warm-up"
    assert (element_text(dom, "pause") or "").startswith("until ")
    assert "<title>qpu-local: paused</title>" in dom
    # and nothing secret: not the node's token, no JWT, no key
    token = stack.env()["CODA_NODE_TOKEN"]
    assert token and token not in dom
    assert "eyJ" not in dom and "PRIVATE KEY" not in dom
    # and a screenshot of it is a PNG
    shot = tmp_path / "status-paused.png"
    chromium(profile, f"--screenshot={shot}", "--window-size=900,1300", "--hide-scrollbars", url)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # when the operator resumes it
    done = stack.command("resume")
    assert done.returncode == 0, done.stderr

    # then the page shows it running, with no pause
    assert wait_until(lambda: state_in_browser() == "Ready: taking jobs", 60, "the page to show it running")
    dom = chromium(profile, "--dump-dom", url)
    assert element_text(dom, "pause") == "not paused"
    assert "fridge warm-up" not in dom
