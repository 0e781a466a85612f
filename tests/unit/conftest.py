"""The unit layer: the router's parts, the wire format, limits and settings, over in-memory
fakes (tests/support/fakes.py). No MariaDB, no Redis, no browser: a fixture that would need one
fails here loudly instead of starting it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from gchat.auth import TokenSigner
from gchat.broker import MemoryBroker
from gchat.config import Settings
from gchat.router import Router
from tests.support.fakes import FakeMoodle, FakeStore, cancel_pending_tasks

SERVICE_FIXTURES = ("mariadb_url", "test_db_url", "site", "services", "app", "people", "redis_url",
                    "redis_prefix", "private_redis", "http_server")


def _refuse(name: str) -> Callable[[], Any]:
    @pytest.fixture(name=name)
    def refuse() -> Any:
        pytest.fail(f"tests/unit uses no services: fixture {name!r} needs one (put the test beside the "
                    "real-service tests in tests/)")

    return refuse


for _name in SERVICE_FIXTURES:
    globals()[f"_no_{_name}"] = _refuse(_name)


@pytest.fixture
def settings(tmp_path: Any) -> Settings:
    return Settings(data_dir=str(tmp_path), secret_key="unit-secret", presence_grace=10.0, history_size=3,
                    session_check_interval=3600, demo=False)


@pytest.fixture
def moodle() -> FakeMoodle:
    return FakeMoodle()


@pytest.fixture
def store() -> FakeStore:
    return FakeStore()


@pytest.fixture
def broker() -> MemoryBroker:
    return MemoryBroker(log_size=50)


class Observed:
    """An observer (gchat.ports.Observer) that writes down what it is told."""

    def __init__(self) -> None:
        self.commands: list[str | None] = []
        self.messages: list[int] = []

    def command_done(self, kind: str | None, seconds: float) -> None:
        assert seconds >= 0
        self.commands.append(kind)

    def message_published(self, stored_ms: int) -> None:
        self.messages.append(stored_ms)


@pytest.fixture
def observed() -> Observed:
    return Observed()


@pytest.fixture
def router(settings: Settings, moodle: FakeMoodle, store: FakeStore, broker: MemoryBroker,
           observed: Observed, io_loop: Any) -> Iterator[Router]:
    router = Router(settings, moodle=moodle, store=store, broker=broker,
                    signer=TokenSigner(settings.secret_key, settings.token_ttl), observer=observed)
    yield router
    io_loop.run_sync(cancel_pending_tasks)
