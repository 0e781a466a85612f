"""Prometheus metrics: ``GET {prefix}/metrics`` in the text (or OpenMetrics) exposition format.

Each application gets its own :class:`prometheus_client.CollectorRegistry`; nothing is registered
in the library's global default registry, so several applications in one process (tests, a
restart in place) never collide and never see each other's numbers.

Most numbers are counters the router, the broker and the database already keep
(``Router.counts``, ``Router.errors_by_code``, ``Router.count_by_transport()``,
``Router.connected_users``, ``Broker.stats()``, ``Database.queries``, ``Database.query_seconds``,
``Database.in_flight``): a custom collector reads them when Prometheus scrapes, so serving chat
costs nothing extra for them. Two things are observed as they happen: :class:`Metrics` is the
router's observer (gchat/ports.py), passed to it at construction (one ``is not None`` test per
command when metrics are off):

* ``gchat_command_seconds{type}``: how long the router took to handle a command, from the moment
  it was handed over by a transport to its reply (database work included). Its ``_count`` is the
  number of commands of each type; ``gchat_commands_total{type}`` says the same as a counter.
* ``gchat_message_delivery_seconds``: from the moment a message was stored (its ``time``, taken
  just before the INSERT) to the moment its ``message`` event was appended to the sender's and
  the recipient's event logs and their connections were woken (commit and fan-out included).
  What remains after that is one write on an open WebSocket, or the answer to a waiting
  long-poll: the event loop's next turns, not measured per event because that would put a
  clock read and a JSON parse on every frame.

The series (rates such as messages per second come from PromQL's ``rate()`` over the counters):

========================================  ==========================================================
``gchat_connections{transport}``          live WebSockets and long-poll tabs on this process
``gchat_online_users``                    users online (memory broker: the whole site)
``gchat_connected_users``                 users with a live connection to this process
``gchat_broker_<count>``                  the broker's own counts (logs, connections, health, ...)
``gchat_broker_info{kind}``               ``memory`` or ``redis``
``gchat_events_published_total``          events appended to users' logs
``gchat_messages_total``                  messages stored
``gchat_commands_total{type}``            commands handled, by type (``other`` for unknown types)
``gchat_errors_total{code}``              commands refused, by protocol error code
``gchat_command_seconds{type}``           histogram: command handling time
``gchat_message_delivery_seconds``        histogram: message stored → event in both users' logs
``gchat_db_pool_size``                    database connections (and worker threads)
``gchat_db_pool_in_use``                  units of work running; ``gchat_db_waiting``: queued
``gchat_db_queries_total``                SQL statements run
``gchat_db_query_seconds_total``          seconds spent in units of work
``gchat_websocket_ping_timeouts_total``   WebSockets closed for a ping not answered by the next one
``gchat_shutting_down``                   1 while stopping
``process_*``, ``python_*``               memory, CPU, open files, garbage collection
========================================  ==========================================================

prometheus-client is optional (``pip install gchat[metrics]``). Without it the server runs as
usual and ``/metrics`` answers 501 with one line saying how to enable it.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from typing import Any

import tornado.web

from gchat.broker import Broker
from gchat.db import Database
from gchat.router import Router
from gchat.transports.heartbeat import Pinger

try:  # optional dependency: gchat[metrics]
    import prometheus_client
    from prometheus_client import CollectorRegistry, Counter, Histogram
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
    from prometheus_client.exposition import choose_encoder
    from prometheus_client.registry import Collector
except ImportError:  # pragma: no cover - exercised by a test that hides the module
    prometheus_client = None  # type: ignore[assignment]
    Collector = object  # type: ignore[assignment,misc]

log = logging.getLogger("gchat.metrics")

NOT_INSTALLED = ("metrics are off: the prometheus-client package is not installed "
                 "(pip install 'gchat[metrics]' or pip install prometheus-client, then restart gchat)\n")

# Commands are counted by type: the router's own types (Router.command_types), and "other" for
# anything else a client sends. A label value never comes from a client, so a client cannot grow
# the series count.
OTHER = "other"
TRANSPORTS = ("websocket", "longpoll")
_METRIC_WORD = re.compile(r"^[a-z][a-z0-9_]*$")

# Seconds. Commands are mostly one or two short transactions; delivery adds the commit.
COMMAND_BUCKETS_SECS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
DELIVERY_BUCKETS_SECS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class _StateCollector(Collector):
    """Reads, at scrape time, what the router, the database, the broker and the WebSocket pinger
    already count."""

    def __init__(self, router: Router, db: Database, broker: Broker, pinger: Pinger | None) -> None:
        self._router = router
        self._db = db
        self._broker = broker
        self._pinger = pinger

    def describe(self) -> list[Any]:
        # Reading the counters is cheap: describing by collecting lets the registry refuse a
        # duplicate name at registration.
        return list(self.collect())

    def collect(self) -> Iterator[Any]:
        router, db, broker = self._router, self._db, self._broker

        connections = GaugeMetricFamily("gchat_connections", "Live client connections by transport "
                                        "(WebSockets, and long-poll tabs that polled recently)",
                                        labels=["transport"])
        by_transport = dict.fromkeys(TRANSPORTS, 0)
        by_transport.update(router.count_by_transport())
        for transport, count in sorted(by_transport.items()):
            connections.add_metric([transport], count)
        yield connections

        counts = router.counts
        yield CounterMetricFamily("gchat_events_published", "Events published to users' event logs "
                                  "(one per event, however many users receive it)", value=counts["events"])
        yield CounterMetricFamily("gchat_messages", "Chat messages stored (a retried send is not counted twice)",
                                  value=counts["messages"])
        errors = CounterMetricFamily("gchat_errors", "Commands refused, by protocol error code", labels=["code"])
        for code, count in sorted(router.errors_by_code.items()):
            errors.add_metric([code], count)
        yield errors

        broker_stats = self._broker_stats()
        if "online" in broker_stats:  # the memory broker knows every online user (one process)
            yield GaugeMetricFamily("gchat_online_users", "Users online (at least one live connection, "
                                    "or within the presence grace period)", value=broker_stats.pop("online"))
        yield GaugeMetricFamily("gchat_connected_users", "Users with at least one live connection "
                                "to this process", value=router.connected_users)
        for key, number in sorted(broker_stats.items()):
            yield GaugeMetricFamily(f"gchat_broker_{key}", f"The broker's own count: {key.replace('_', ' ')}",
                                    value=number)
        yield GaugeMetricFamily("gchat_shutting_down", "1 while the server is stopping", value=int(router.closing))

        in_flight = db.in_flight
        yield GaugeMetricFamily("gchat_db_pool_size", "Database connections (and worker threads) available",
                                value=db.pool_size)
        yield GaugeMetricFamily("gchat_db_pool_in_use", "Database units of work running now",
                                value=min(in_flight, db.pool_size))
        yield GaugeMetricFamily("gchat_db_waiting", "Database units of work queued for a free connection",
                                value=max(0, in_flight - db.pool_size))
        yield CounterMetricFamily("gchat_db_queries", "SQL statements run", value=db.queries)
        yield CounterMetricFamily("gchat_db_query_seconds", "Seconds spent in database units of work "
                                  "(waiting for a connection, queries, commit)", value=db.query_seconds)

        timeouts = self._pinger.timeouts if self._pinger is not None else 0
        yield CounterMetricFamily("gchat_websocket_ping_timeouts", "WebSockets closed because a ping "
                                  "was not answered by the next one", value=timeouts)

        yield InfoMetricFamily("gchat_broker", "Which broker keeps the event logs and presence",
                               value={"kind": broker.name})

    def _broker_stats(self) -> dict[str, int]:
        """The integer counts a broker offers through ``stats()`` (memory: logs, online users,
        connections; Redis: this process's subscriptions and connections, health)."""
        try:
            found: Any = self._broker.stats()
        except Exception:  # a broker's bookkeeping must never break a scrape
            log.debug("broker stats failed", exc_info=True)
            return {}
        if not isinstance(found, dict):
            return {}
        return {str(k): int(v) for k, v in found.items()
                if isinstance(v, (int, bool)) and _METRIC_WORD.match(str(k)) and k != "info"}


class Metrics:
    """One application's registry, and the router's observer (gchat.ports.Observer)."""

    def __init__(self) -> None:
        assert prometheus_client is not None
        self.registry = CollectorRegistry(auto_describe=False)
        # The usual process_* and python_* series (memory, CPU, open files) of this process.
        prometheus_client.ProcessCollector(registry=self.registry)
        prometheus_client.PlatformCollector(registry=self.registry)
        prometheus_client.GCCollector(registry=self.registry)
        self._commands = Counter("gchat_commands", "Commands handled, by type", ["type"], registry=self.registry)
        self._seconds = Histogram("gchat_command_seconds", "Time to handle a command, from its arrival at the "
                                  "router to its reply", ["type"], buckets=COMMAND_BUCKETS_SECS, registry=self.registry)
        # Children bound once per type: an observation is a dict lookup, an increment and a
        # bucket search.
        self._by_type: dict[str, tuple[Any, Any]] = {}
        self._other = self._bind(OTHER)
        self._delivery = Histogram("gchat_message_delivery_seconds", "Time from a message being stored to its "
                                   "event being in the event logs of both users, their connections woken",
                                   buckets=DELIVERY_BUCKETS_SECS, registry=self.registry)

    def _bind(self, kind: str) -> tuple[Any, Any]:
        children = self._by_type[kind] = (self._commands.labels(kind), self._seconds.labels(kind))
        return children

    def watch(self, router: Router, db: Database, broker: Broker, pinger: Pinger | None) -> None:
        """Read the state of this application at every scrape; every command type of the
        router gets its series now (0 until used)."""
        for kind in router.command_types:
            self._bind(kind)
        self.registry.register(_StateCollector(router, db, broker, pinger))

    # -- the router's observer interface ---------------------------------------------------

    def command_done(self, kind: str | None, seconds: float) -> None:
        if kind is None:
            counter, histogram = self._other
        else:  # one of the router's types: a bounded set
            counter, histogram = self._by_type.get(kind) or self._bind(kind)
        counter.inc()
        histogram.observe(seconds)

    def message_published(self, stored_ms: int) -> None:
        self._delivery.observe(max(0.0, time.time() - stored_ms / 1000.0))

    # -- exposition -------------------------------------------------------------------------

    def render(self, accept: str | None) -> tuple[bytes, str]:
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type


def new_observer() -> Metrics | None:
    """The observer a router is built with: a fresh registry, or None without prometheus-client."""
    return Metrics() if prometheus_client is not None else None


def build_metrics(router: Router, db: Database, broker: Broker, pinger: Pinger | None = None) -> Metrics | None:
    """This application's metrics: the router's observer, now also reading the router, the
    database, the broker and the pinger at scrape time. None when the router was built without one."""
    metrics = router.observer
    if not isinstance(metrics, Metrics):
        log.info("prometheus-client is not installed: %s/metrics answers 501", router.settings.url_prefix)
        return None
    metrics.watch(router, db, broker, pinger)
    return metrics


class MetricsHandler(tornado.web.RequestHandler):
    """``GET {prefix}/metrics``. No authentication: restrict it where gchat listens or in the
    reverse proxy (conf/nginx-gchat.conf allows it from the proxy host only)."""

    def initialize(self, metrics: Metrics | None) -> None:
        self.metrics = metrics

    def get(self) -> None:
        self.set_header("Cache-Control", "no-store")
        if self.metrics is None:
            self.set_status(501)
            self.set_header("Content-Type", "text/plain; charset=utf-8")
            self.finish(NOT_INSTALLED)
            return
        body, content_type = self.metrics.render(self.request.headers.get("Accept"))
        self.set_header("Content-Type", content_type)
        self.finish(body)
