"""Fixtures shared by the test modules (registered by tests/conftest.py): gchat's services and
application built by production's own build_services/make_app over the test database, started
and closed through ``Services`` as ``gchat serve`` does, and the people of a test.

The database fixtures (``test_db_url``, ``site``, ``settings``) are in tests/conftest.py; the
Redis ones in tests/support/redis.py. None of them is used by tests/unit/.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import tornado.web

from gchat.app import Services, build_services, make_app
from gchat.config import Settings
from tests.support.clients import People
from tests.support.fakes import cancel_pending_tasks


@pytest.fixture
def services(settings: Settings, site: Any, io_loop: Any) -> Iterator[Services]:
    built = build_services(settings)
    io_loop.run_sync(built.start)
    yield built
    io_loop.run_sync(built.aclose)
    # As asyncio.run does when gchat stops: what is still running (an announcement waiting for
    # the closed database) is cancelled, not destroyed with the loop.
    io_loop.run_sync(cancel_pending_tasks)


@pytest.fixture
def app(services: Services) -> tornado.web.Application:
    return make_app(services)


@pytest.fixture
def people(http_server: Any, base_url: str, site: Any, io_loop: Any) -> Iterator[People]:
    """This test's users on the test server (pytest-tornado's ``http_server`` over ``app``)."""
    crowd = People(base_url, site)
    yield crowd
    io_loop.run_sync(crowd.close)
