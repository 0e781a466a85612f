"""``GET /gchat/metrics`` after a short load: a few users chatting over both transports."""

from __future__ import annotations

import asyncio
import os
import sys
import urllib.error
import urllib.request

import prometheus_client
import pytest
from prometheus_client.parser import text_string_to_metric_families
from tornado.httpclient import AsyncHTTPClient, HTTPClientError

import gchat.metrics
from tests.support.clients import connect
from tests.support.process import ROOT, ServerProcess, free_port, health_status
from tests.support.redis import with_params
from tests.support.serving import running


async def scrape(base_url, accept=None):
    headers = {"Accept": accept} if accept else {}
    response = await AsyncHTTPClient().fetch(f"{base_url}/gchat/metrics", headers=headers)
    return response


def samples(text):
    """{(sample name, frozenset(labels)): value} of a text exposition."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(found, name, **labels):
    return found[(name, frozenset(labels.items()))]


@pytest.mark.gen_test(timeout=60)
async def test_scrape_during_load_shows_counters_and_a_latency_histogram(http_server, base_url, site, settings):
    ana, ben, chloe = site.classmates("Ana", "Ben", "Chloe")
    a = await connect(base_url, site, ana, "websocket")
    a2 = await connect(base_url, site, ana, "longpoll")  # Ana's second tab
    b = await connect(base_url, site, ben, "longpoll")
    c = await connect(base_url, site, chloe, "websocket")
    ab = (await a.command("open", user=ben))["conversation"]["id"]
    ca = (await c.command("open", user=ana))["conversation"]["id"]
    sends = []
    for i in range(5):
        sends += [a.send_text(ab, f"a→b {i}"), b.send_text(ab, f"b→a {i}"), c.send_text(ca, f"c→a {i}")]
    replies = await asyncio.gather(*sends)
    assert all(r["ok"] for r in replies)
    await b.wait_for(lambda e: e.get("type") == "message" and e["message"]["text"] == "a→b 4")
    await a2.wait_for(lambda e: e.get("type") == "message" and e["message"]["text"] == "c→a 4")
    refused = await a.command("open", user=ana)  # with oneself: not_allowed
    assert refused["error"]["code"] == "not_allowed"

    response = await scrape(base_url)
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert response.headers["Cache-Control"] == "no-store"
    found = samples(response.body.decode())

    assert value(found, "gchat_connections", transport="websocket") == 2
    assert value(found, "gchat_connections", transport="longpoll") == 2
    assert value(found, "gchat_online_users") == 3
    assert value(found, "gchat_connected_users") == 3
    assert value(found, "gchat_broker_connections") == 4
    assert value(found, "gchat_messages_total") == 15
    assert value(found, "gchat_events_published_total") >= 15
    assert value(found, "gchat_commands_total", type="send") == 15
    assert value(found, "gchat_commands_total", type="open") == 3
    assert value(found, "gchat_errors_total", code="not_allowed") == 1

    # Command handling time, by type: 15 sends observed, every one in a bucket.
    assert value(found, "gchat_command_seconds_count", type="send") == 15
    assert value(found, "gchat_command_seconds_bucket", type="send", le="+Inf") == 15
    assert value(found, "gchat_command_seconds_sum", type="send") > 0
    # Delivery latency (stored → in both users' event logs): 15 observations, all within a second.
    assert value(found, "gchat_message_delivery_seconds_count") == 15
    assert value(found, "gchat_message_delivery_seconds_bucket", le="1.0") == 15
    assert value(found, "gchat_message_delivery_seconds_sum") > 0

    assert value(found, "gchat_db_pool_size") == settings.db_pool_size
    assert 0 <= value(found, "gchat_db_pool_in_use") <= settings.db_pool_size
    assert value(found, "gchat_db_queries_total") > 15
    assert value(found, "gchat_db_query_seconds_total") > 0
    assert value(found, "gchat_broker_info", kind="memory") == 1
    assert value(found, "gchat_shutting_down") == 0
    assert value(found, "process_resident_memory_bytes") > 0

    # A second scrape sees the counters move on.
    await a.send_text(ab, "one more")
    again = samples((await scrape(base_url)).body.decode())
    assert value(again, "gchat_messages_total") == 16
    assert value(again, "gchat_message_delivery_seconds_count") == 16
    for client in (a, a2, b, c):
        await client.close()


@pytest.mark.gen_test(timeout=30)
async def test_openmetrics_on_request_and_unknown_commands_do_not_make_labels(http_server, base_url, site):
    (ana,) = site.classmates("Ana")
    a = await connect(base_url, site, ana, "websocket")
    for kind in ("drop_tables", "x" * 100, 42):
        reply = await a.raw({"type": kind, "ref": 1})
        assert reply["error"]["code"] == "bad_command"
    await a.close()
    response = await scrape(base_url, accept="application/openmetrics-text; version=1.0.0")
    assert response.headers["Content-Type"].startswith("application/openmetrics-text")
    text = response.body.decode()
    assert text.endswith("# EOF\n")
    assert 'gchat_commands_total{type="other"} 3.0' in text
    assert "drop_tables" not in text


@pytest.mark.gen_test(timeout=30)
async def test_without_prometheus_client_metrics_answer_501_and_chat_runs(site, settings, monkeypatch):
    monkeypatch.setattr(gchat.metrics, "prometheus_client", None)
    async with running(settings) as (services, base):
        with pytest.raises(HTTPClientError) as caught:
            await AsyncHTTPClient().fetch(base + "/gchat/metrics")
        body = caught.value.response.body.decode()
        assert caught.value.code == 501
        assert body.count("\n") == 1 and "pip install" in body and "prometheus-client" in body
        assert services.router.observer is None
        (ana,) = site.classmates("Ana")
        client = await connect(base, site, ana, "longpoll")
        assert (await client.command("ping"))["ok"]
        await client.close()
        health = await AsyncHTTPClient().fetch(base + "/gchat/health")
        assert health.code == 200


@pytest.mark.gen_test(timeout=30)
async def test_each_application_has_its_own_registry(site, settings):
    async with running(settings) as (_, base1), running(settings) as (_, base2):
        (ana,) = site.classmates("Ana")
        client = await connect(base1, site, ana, "websocket")
        await client.command("ping")
        await client.close()
        one = samples((await scrape(base1)).body.decode())
        two = samples((await scrape(base2)).body.decode())
        assert value(one, "gchat_commands_total", type="ping") == 1
        assert value(two, "gchat_commands_total", type="ping") == 0
        # Nothing of gchat's lands in the library's global registry.
        assert not [m for m in prometheus_client.REGISTRY.collect() if m.name.startswith("gchat")]


@pytest.mark.gen_test(timeout=30)
async def test_with_the_redis_broker(site, settings, redis_url, redis_prefix):
    async with running(settings.replace(broker_url=with_params(redis_url, key_prefix=redis_prefix))) as (_, base):
        (ana,) = site.classmates("Ana")
        client = await connect(base, site, ana, "websocket")
        assert (await client.command("ping"))["ok"]
        found = samples((await scrape(base)).body.decode())
        await client.close()
        assert value(found, "gchat_broker_info", kind="redis") == 1
        assert value(found, "gchat_connected_users") == 1  # on this process; Redis knows the rest
        assert value(found, "gchat_connections", transport="websocket") == 1
        assert value(found, "gchat_commands_total", type="ping") == 1
        assert not [key for key in found if key[0] == "gchat_online_users"]


def test_server_without_prometheus_client_installed(tmp_path):
    """A real process in which ``import prometheus_client`` fails, as when it is not installed."""
    port = free_port()
    code = ("import sys; sys.modules['prometheus_client'] = None; from gchat.main import main; "
            f"main(['--port={port}', '--data_dir={tmp_path}', '--log_level=warning'])")
    process = ServerProcess([sys.executable, "-c", code], log_path=str(tmp_path / "gchat.log"), cwd=ROOT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, name="gchat")
    base = f"http://127.0.0.1:{port}"
    try:
        process.start(lambda: health_status(base) == 200, timeout=30)
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(base + "/gchat/metrics", timeout=5)
        assert caught.value.code == 501
        body = caught.value.read().decode()
        assert body.count("\n") == 1 and "prometheus-client" in body
    finally:
        assert process.terminate(15) == 0
