"""Fixtures for the browser tests: a gchat server per test, one Chromium for the session.

Each test gets its own server (a subprocess on a free port with its own temporary data folder,
so the SQLite demo database, secret key and event logs start fresh) and stops it afterwards.
Every simulated person gets their own browser context (own cookies, own sessionStorage).
Helpers live in gchat_browser.py.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from playwright.sync_api import sync_playwright

from gchat_browser import CHROMIUM, CHROMIUM_ARGS, GchatServer, User, running_server


# Short presence grace so "logged out → gone from the list" is quick; frequent session checks.
SERVER_ARGS = ["--presence_grace=1", "--session_check_interval=2", "--log_level=warning"]


def pytest_configure(config):
    config.addinivalue_line("markers", "server_args(*args): extra command-line settings for this test's server")


@pytest.fixture
def server(request) -> Iterator[GchatServer]:
    marker = request.node.get_closest_marker("server_args")
    yield from running_server(SERVER_ARGS + list(marker.args if marker else ()))


# Module scope, not session: Playwright's sync API keeps an asyncio loop running in this thread
# while it is started, which would break the pytest-tornado tests collected after this folder.
@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def users(browser, server):
    """users(ANA) → a logged-in User; every context is closed at the end of the test."""
    made: list[User] = []

    def make(user_id: int, *, login: bool = True, **kwargs) -> User:
        user = User(browser, server, user_id, **kwargs)
        made.append(user)
        if login:
            user.login()
        return user

    yield make
    errors = {user.id: user.errors for user in made if user.errors}
    for user in made:
        user.close()
    assert not errors, f"JavaScript errors in the pages: {errors}"
