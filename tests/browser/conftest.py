"""Real-browser tests of the admin app: one Loom server (a seeded copy of ``examples/sales`` on a
temporary SQLite file, served by ``loom serve`` in a subprocess) and one headless Chromium per session.

Chromium is Debian's (``/usr/bin/chromium``, or ``$LOOM_CHROMIUM``); Playwright only drives it. Without it
the tests are skipped with the reason, unless ``LOOM_REQUIRE_BROWSER=1``, which turns the skip into a
failure. Every test leaves a screenshot of its last page in ``tests/artifacts/<test name>.png``.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from loomcrm.engine.cli import main as loom

ROOT = Path(__file__).resolve().parents[2]
SALES = ROOT / "examples" / "sales"
ARTIFACTS = ROOT / "tests" / "artifacts"
CHROMIUM = Path(os.environ.get("LOOM_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
REQUIRE_BROWSER = os.environ.get("LOOM_REQUIRE_BROWSER") == "1"
PASSWORD = "loom-demo-2026"  # the sales example's demo sign-ins (examples/sales/seed.py)


def _browser_unavailable() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install -e '.[dev]')"
    if not CHROMIUM.is_file() or not os.access(CHROMIUM, os.X_OK):
        return f"no Chromium at {CHROMIUM} (apt-get install chromium, or set LOOM_CHROMIUM)"
    return None


def pytest_collection_modifyitems(config, items) -> None:
    reason = _browser_unavailable()
    if reason is None or REQUIRE_BROWSER:
        return
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.skip(reason=reason))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def base_url(tmp_path_factory) -> Iterator[str]:
    """The root URL of a Loom server serving a migrated and seeded copy of the sales example."""
    project = tmp_path_factory.mktemp("sales") / "sales"
    shutil.copytree(SALES, project, ignore=shutil.ignore_patterns("*.db*", "__pycache__", "phases"))
    database = f"sqlite:///{project / 'browser.db'}"
    assert loom(["-p", str(project), "migrate", "--database", database, "--no-backup"]) == 0
    assert loom(["-p", str(project), "seed", "--database", database]) == 0
    port = free_port()
    log = (project / "server.log").open("w")
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "loom"), "-p", str(project), "serve", "--port", str(port)],
        env={**os.environ, "LOOM_DATABASE_URL": database}, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail("the Loom server did not start:\n" + (project / "server.log").read_text())
            time.sleep(0.1)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


@pytest.fixture(scope="session")
def browser():
    reason = _browser_unavailable()
    if reason:
        pytest.fail(f"LOOM_REQUIRE_BROWSER=1 but {reason}")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def signed_in(page, base_url: str, username: str, password: str = PASSWORD) -> None:
    """Sign in through the sign-in form and wait for the page it leads to."""
    page.goto(f"{base_url}/admin/login")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(re.compile(r".*/admin/(?!login).*"))


@pytest.fixture
def sign_in() -> Callable[..., None]:
    """``sign_in(page, base_url, username, password=PASSWORD)`` through the sign-in form."""
    return signed_in


@pytest.fixture
def open_page(browser, base_url, request) -> Iterator[Callable[..., object]]:
    """``open_page(username=None)``: a page in a browser context of its own (its own cookies), signed
    in as ``username`` when given, in English. The last page opened is screenshot at the end."""
    contexts, pages = [], []

    def opened(username: str | None = None):
        context = browser.new_context(locale="en-US", viewport={"width": 1280, "height": 900})
        context.set_default_timeout(10_000)
        contexts.append(context)
        page = context.new_page()
        pages.append(page)
        if username:
            signed_in(page, base_url, username)
        return page

    yield opened
    if pages:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
        try:
            pages[-1].screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
        except Exception as exc:  # a screenshot must not hide the test's own result
            print(f"no screenshot for {name}: {exc}")
    for context in contexts:
        context.close()
