"""Redis for tests: the one already listening (or a throwaway instance), one key prefix per test
so that tests never see each other's keys, and a private instance for tests that stop Redis.

The fixtures are registered for every test module by tests/conftest.py (``pytest_plugins``).
Nothing here ever flushes a Redis: a test's keys are deleted by prefix when it ends.
"""

from __future__ import annotations

import secrets
import urllib.parse

import pytest
import redis

from tests.services import RedisInstance, shared_redis_url


def with_params(url: str, **params: object) -> str:
    """``redis://h:6379/0`` + ``key_prefix=…`` → ``redis://h:6379/0?key_prefix=…`` (also for
    ``unix:///path?db=0``, which urlunsplit would shorten to ``unix:/path``)."""
    if not params:
        return url
    extra = urllib.parse.urlencode([(k, str(v)) for k, v in params.items()])
    return url + ("&" if "?" in url else "?") + extra


def delete_prefix(url: str, prefix: str) -> int:
    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)
    try:
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start:start + 500])
        return len(keys)
    except redis.exceptions.ConnectionError:
        return 0  # a throwaway instance already stopped
    finally:
        client.close()


@pytest.fixture(scope="session")
def redis_url():
    url = shared_redis_url()
    if url:
        yield url
        return
    instance = RedisInstance()
    instance.start()
    try:
        yield instance.url
    finally:
        instance.destroy()


@pytest.fixture
def redis_prefix(redis_url):
    """A key prefix of this test's own; its keys are deleted afterwards."""
    prefix = f"gchat-test:{secrets.token_hex(5)}:"
    yield prefix
    delete_prefix(redis_url, prefix)


@pytest.fixture
def private_redis():
    """A throwaway redis-server this test may stop and start (no data survives a restart)."""
    instance = RedisInstance()
    instance.start()
    try:
        yield instance
    finally:
        instance.destroy()
