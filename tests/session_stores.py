"""Moodle session stores for tests, each written by real PHP (tests/php_moodle.py): the sessions
table with PHP's ``sessdata``, the file handler (Moodle 2.6+ rows, and 2.2-2.5 without rows),
and Moodle 4.5+'s Redis store (single server and Redis Cluster), plus a throwaway three-node
Redis Cluster and the ``config_plugins`` rows that turn multi-factor authentication on.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import urllib.parse
from typing import Any

import pytest

from tests.php_moodle import Php
from tests.services import ServiceError, _apt_install, _wait_until

SESSION_TIMEOUT = 7200
GUEST_ID = 1


class DatabaseSessions:
    """Moodle's database handler: the row, PHP's session data base64 in ``sessdata``."""

    name = "database"

    def __init__(self, php: Php, site: Any) -> None:
        self.php, self.site = php, site
        self.setting = "database"

    def login(self, user: int, *, age: int = 0, state: int = 0, mfa: bool | None = None,
              loginas: int | None = None) -> str:
        return self.php.db_login(self.site, user, mfa=mfa, loginas=loginas, age=age, state=state)

    def page(self, sid: str, *, pass_mfa: bool = False) -> None:
        self.php.db_page(self.site, sid, pass_mfa=pass_mfa)

    def logout(self, sid: str) -> None:
        self.site.logout(sid)  # handler::destroy(): the row goes

    def set_state(self, sid: str, state: int) -> None:
        self.site.execute("UPDATE {p}sessions SET state = %s WHERE sid = %s", (state, sid))


class FileSessions:
    """Moodle 2.6+'s file handler: the row in ``{sessions}`` decides, PHP's files handler keeps
    the data in ``<dir>/sess_<sid>``."""

    name = "files"

    def __init__(self, php: Php, site: Any, directory: str) -> None:
        self.php, self.site, self.directory = php, site, directory
        self.setting = f"files:{directory}"

    def login(self, user: int, *, age: int = 0, state: int = 0, mfa: bool | None = None,
              loginas: int | None = None) -> str:
        sid = self.site.login(user, state=state, age=age)
        self.php.file_login(self.directory, user, sid=sid, mfa=mfa, loginas=loginas, age=age)
        return sid

    def page(self, sid: str, *, pass_mfa: bool = False) -> None:
        self.php.file_page(self.directory, sid, pass_mfa=pass_mfa)

    def logout(self, sid: str) -> None:
        self.php.file_logout(self.directory, sid)  # file.php destroy(): the file, then the row
        self.site.logout(sid)

    def set_state(self, sid: str, state: int) -> None:
        self.site.execute("UPDATE {p}sessions SET state = %s WHERE sid = %s", (state, sid))


class LegacyFileSessions(FileSessions):
    """Moodle 2.2-2.5 with ``dbsessions = 0``: no rows at all, the file alone."""

    name = "files-2.2"

    def login(self, user: int, *, age: int = 0, state: int = 0, mfa: bool | None = None,
              loginas: int | None = None) -> str:
        return self.php.file_login(self.directory, user, mfa=mfa, loginas=loginas, age=age)

    def logout(self, sid: str) -> None:
        self.php.file_logout(self.directory, sid)


class RedisSessions:
    """Moodle 4.5+'s Redis store, records written by phpredis as redis.php writes them."""

    name = "redis"

    def __init__(self, php: Php, *, prefix: str, serializer: str = "php", compressor: str = "none",
                 url: str = "", seeds: list[str] | None = None) -> None:
        self.php = php
        self.conf: dict[str, Any] = dict(prefix=prefix, serializer=serializer, compressor=compressor,
                                         sessiontimeout=SESSION_TIMEOUT, siteguest=GUEST_ID)
        query = urllib.parse.urlencode(dict(prefix=prefix, serializer=serializer, compressor=compressor))
        if seeds:
            self.conf["seeds"] = seeds
            self.setting = f"redis://{','.join(seeds)}/0?{query}"
        elif url.startswith("unix://"):
            path = urllib.parse.urlsplit(url).path
            self.conf.update(socket=path, db=0)
            self.setting = f"unix://{path}?db=0&{query}"
        else:
            parts = urllib.parse.urlsplit(url)
            db = int(parts.path.strip("/") or 0)
            self.conf.update(host=parts.hostname or "127.0.0.1", port=parts.port or 6379, db=db)
            self.setting = f"redis://{self.conf['host']}:{self.conf['port']}/{db}?{query}"
        self.name = f"redis-{serializer}-{compressor}" + ("-cluster" if seeds else "")

    def login(self, user: int, *, age: int = 0, state: int = 0, mfa: bool | None = None,
              loginas: int | None = None) -> str:
        sid = self.php.redis_login(self.conf, user, mfa=mfa, loginas=loginas, age=age)
        if state:
            self.set_state(sid, state)
        return sid

    def page(self, sid: str, *, pass_mfa: bool = False) -> None:
        self.php.redis_page(self.conf, sid, pass_mfa=pass_mfa)

    def logout(self, sid: str) -> None:
        self.php.redis_logout(self.conf, sid)

    def set_state(self, sid: str, state: int) -> None:
        """Through redis.php's update_session(), which writes any record field it is given."""
        self.php.run({"action": "page", "store": "redis", "redis": self.conf, "sid": sid,
                      "record_update": {"state": str(state)}})


def enable_mfa(site: Any, *, tool: str = "1", factors: dict[str, str] | None = None) -> None:
    """tool_mfa's switches as Moodle's admin pages save them: ``set_config('enabled', …, plugin)``."""
    ensure_config_plugins(site)
    site.execute("DELETE FROM {p}config_plugins WHERE name = 'enabled' "
                 "AND (plugin = 'tool_mfa' OR plugin LIKE 'factor%%')")
    rows = [("tool_mfa", tool)] + list((factors if factors is not None else {"factor_totp": "1"}).items())
    for plugin, value in rows:
        site.execute("INSERT INTO {p}config_plugins (plugin, name, value) VALUES (%s, 'enabled', %s)", (plugin, value))


def disable_mfa(site: Any) -> None:
    ensure_config_plugins(site)
    site.execute("DELETE FROM {p}config_plugins WHERE name = 'enabled' "
                 "AND (plugin = 'tool_mfa' OR plugin LIKE 'factor%%')")


def ensure_config_plugins(site: Any) -> None:
    """Moodle's ``config_plugins`` (lib/db/install.xml), in case the fixture schema lacks it
    (the hand-made 2.2 one does; every XMLDB schema has it)."""
    if site.has_table("config_plugins"):
        return
    if site.engine == "postgresql":
        site.execute("CREATE TABLE IF NOT EXISTS {p}config_plugins (id BIGSERIAL, plugin VARCHAR(100) NOT NULL "
                     "DEFAULT 'core', name VARCHAR(100) NOT NULL DEFAULT '', value TEXT NOT NULL, "
                     "CONSTRAINT {p}confplug_id_pk PRIMARY KEY (id))")
        site.execute("CREATE UNIQUE INDEX IF NOT EXISTS {p}confplug_plunam_uix ON {p}config_plugins (plugin, name)")
    else:
        site.execute("CREATE TABLE IF NOT EXISTS {p}config_plugins (id BIGINT(10) NOT NULL AUTO_INCREMENT, "
                     "plugin VARCHAR(100) NOT NULL DEFAULT 'core', name VARCHAR(100) NOT NULL DEFAULT '', "
                     "value LONGTEXT NOT NULL, PRIMARY KEY (id), UNIQUE KEY {p}confplug_plunam_uix (plugin, name))")
    site.forget_tables()  # reset() empties it from now on


# -- a throwaway Redis Cluster -----------------------------------------------------------------------


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def spare_ports(count: int) -> list[int]:
    """Ports free on 127.0.0.1 whose cluster bus port (port + 10000) is free too."""
    ports: list[int] = []
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        start = 20000 + probe.getsockname()[1] % 20000
    for port in range(start, 40000):
        if _port_free(port) and _port_free(port + 10000):
            ports.append(port)
            if len(ports) == count:
                return ports
    raise ServiceError("no spare ports for a Redis Cluster")


class RedisCluster:
    """Three ``redis-server --cluster-enabled yes`` nodes in a private folder, joined with
    ``redis-cli --cluster create``; nothing kept on disk beyond the folder, removed at the end."""

    def __init__(self, nodes: int = 3) -> None:
        self.server = _apt_install("redis-server", "redis-server")
        self.cli = shutil.which("redis-cli") or _apt_install("redis-tools", "redis-cli")
        self.dir = tempfile.mkdtemp(prefix="gchat-redis-cluster-")
        self.ports = spare_ports(nodes)
        self.processes: list[subprocess.Popen] = []

    @property
    def seeds(self) -> list[str]:
        return [f"127.0.0.1:{port}" for port in self.ports]

    def start(self) -> None:
        for port in self.ports:
            folder = os.path.join(self.dir, str(port))
            os.mkdir(folder)
            self.processes.append(subprocess.Popen(
                [self.server, "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                 "--cluster-config-file", os.path.join(folder, "nodes.conf"), "--cluster-node-timeout", "5000",
                 "--save", "", "--appendonly", "no", "--dir", folder],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for port in self.ports:
            _wait_until(lambda port=port: self._cli(port, "PING") == "PONG", 20, f"Redis Cluster node {port}")
        subprocess.run([self.cli, "--cluster", "create", *self.seeds, "--cluster-replicas", "0", "--cluster-yes"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
        for port in self.ports:
            _wait_until(lambda port=port: "cluster_state:ok" in self._cli(port, "CLUSTER", "INFO"), 30,
                        f"Redis Cluster state ok on {port}")

    def _cli(self, port: int, *command: str) -> str:
        done = subprocess.run([self.cli, "-h", "127.0.0.1", "-p", str(port), *command], capture_output=True,
                              text=True, timeout=10)
        return done.stdout.strip()

    def destroy(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes = []
        shutil.rmtree(self.dir, ignore_errors=True)



class TlsRedis:
    """A private redis-server speaking only TLS (a self-signed certificate made with openssl for
    127.0.0.1) and asking for a password, as $CFG->session_redis_encrypt and _auth expect."""

    password = "s3cret-pass"

    def __init__(self) -> None:
        self.server = _apt_install("redis-server", "redis-server")
        self.openssl = shutil.which("openssl") or _apt_install("openssl", "openssl")
        self.dir = tempfile.mkdtemp(prefix="gchat-redis-tls-")
        self.port = spare_ports(1)[0]
        self.ca = os.path.join(self.dir, "cert.pem")
        self.key = os.path.join(self.dir, "key.pem")
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        subprocess.run([self.openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                        "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                        "-keyout", self.key, "-out", self.ca], check=True, capture_output=True, timeout=60)
        self.process = subprocess.Popen(
            [self.server, "--port", "0", "--tls-port", str(self.port), "--bind", "127.0.0.1",
             "--tls-cert-file", self.ca, "--tls-key-file", self.key, "--tls-ca-cert-file", self.ca,
             "--tls-auth-clients", "no", "--requirepass", self.password, "--save", "", "--appendonly", "no",
             "--dir", self.dir], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def listening() -> bool:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True

        _wait_until(listening, 20, "the TLS Redis")

    def destroy(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def php() -> Php:
    return Php()


@pytest.fixture(scope="session")
def redis_cluster():
    cluster = RedisCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()
