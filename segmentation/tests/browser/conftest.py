"""Real-browser tests: Playwright's sync API driving Debian's Chromium against ``live_server``.

No browser is ever downloaded (``playwright install`` is not used): the tests launch the
system ``/usr/bin/chromium``. Without it they skip, or fail when ``REQUIRE_SERVICES=1``
(CI installs it).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

# Playwright's sync API runs an event loop in this thread; Django refuses ORM calls from a
# thread with a running loop unless told it is safe (it is: the loop never runs our code).
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: Milliseconds a browser step may take before the test fails.
TIMEOUT_MS = 15_000


def pytest_collection_modifyitems(items):
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(pytest.mark.browser)


@pytest.fixture(scope="session")
def chromium() -> Iterator:
    """One Chromium for the session."""
    from django.conf import settings

    if not (os.path.exists(CHROMIUM) or shutil.which(CHROMIUM)):
        message = f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)"
        if settings.REQUIRE_SERVICES:
            pytest.fail(f"{message}, and REQUIRE_SERVICES=1 demands it", pytrace=False)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        yield browser
        browser.close()


@pytest.fixture
def tab(chromium, live_server):
    """A fresh browser context and page; failures in the page's JS fail the test.

    Not called ``page``: pytest-playwright (installed) parametrizes every test that uses a
    fixture of that name by browser, at session scope, which makes pytest regroup those tests
    and run these transactional ones in the middle of the suite instead of last.
    """
    context = chromium.new_context(base_url=live_server.url)
    context.set_default_timeout(TIMEOUT_MS)
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda error: errors.append(str(error)))
    yield tab
    context.close()
    assert not errors, f"JavaScript errors: {errors}"


@pytest.fixture
def login(tab):
    """``login(user)``: sign in through the login form, like a person."""
    from conftest import PASSWORD

    def do(user) -> None:
        tab.goto("/accounts/login/")
        tab.get_by_label("Username").fill(user.get_username())
        tab.get_by_label("Password").fill(PASSWORD)
        tab.get_by_role("button", name="Log in").click()
        tab.wait_for_url(lambda url: "/accounts/login/" not in url)
        assert tab.get_by_role("button", name="Log out").is_visible()

    return do


@pytest.fixture
def no_worker(monkeypatch):
    """Tasks submitted by the pages are recorded, not run: the test advances the job itself
    (deterministic progress; with REDIS_URL set there is no worker in tests anyway)."""
    from types import SimpleNamespace

    import segmentation.tasks

    queued: dict[str, list] = {"imports": [], "refreshes": []}
    monkeypatch.setattr(
        segmentation.tasks,
        "import_job_run_task",
        SimpleNamespace(delay=lambda job_id: queued["imports"].append(job_id)),
    )
    monkeypatch.setattr(
        segmentation.tasks,
        "refresh_run_task",
        SimpleNamespace(delay=lambda run_id: queued["refreshes"].append(run_id)),
    )
    return queued
