"""The real services the tests need: MariaDB, PostgreSQL and Redis.

The ones already listening are used when they answer (127.0.0.1:3306 as root, 127.0.0.1:5432 as
postgres, 127.0.0.1:6379, or GCHAT_TEST_MYSQL / GCHAT_TEST_PG / GCHAT_TEST_REDIS); otherwise a
throwaway instance is started in a private folder on a Unix socket, and the package is installed
with apt-get first when it is missing and we are root. Nothing is skipped: a service that cannot
be had fails the run loudly.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.parse
from typing import Any

import psycopg
import pymysql


class ServiceError(RuntimeError):
    pass


def _apt_install(package: str, binary: str) -> str:
    found = shutil.which(binary) or (os.path.exists(f"/usr/sbin/{binary}") and f"/usr/sbin/{binary}")
    if found:
        return found
    if os.geteuid() != 0:
        raise ServiceError(f"{binary} is not installed and we are not root to apt-get install {package}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=False, env=env, stdout=subprocess.DEVNULL)
    subprocess.run(["apt-get", "install", "-y", "-qq", package], check=True, env=env, stdout=subprocess.DEVNULL)
    found = shutil.which(binary) or (os.path.exists(f"/usr/sbin/{binary}") and f"/usr/sbin/{binary}")
    if not found:
        raise ServiceError(f"apt-get installed {package} but {binary} is still missing")
    return found


def _answers(connection: Any) -> bool:
    """A connection was made: close it, the server answers."""
    connection.close()
    return True


def _wait_until(check, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception as exc:  # the service is still starting
            last = exc
        time.sleep(0.1)
    raise ServiceError(f"{what} did not come up in {seconds:.0f}s ({last})")


def mysql_connect(url: str, database: str | None = None, **kw) -> pymysql.connections.Connection:
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qs(parts.query)
    args = dict(user=parts.username or "root", password=parts.password or "", charset="utf8mb4",
                autocommit=True, connect_timeout=3, **kw)
    if "unix_socket" in query:
        args["unix_socket"] = query["unix_socket"][0]
    else:
        args.update(host=parts.hostname or "127.0.0.1", port=parts.port or 3306)
    if database:
        args["database"] = database
    return pymysql.connect(**args)


def db_connect(url: str, database: str | None = None) -> Any:
    """An autocommit DB-API connection to ``database`` of the MariaDB or PostgreSQL at ``url``."""
    if is_postgresql(url):
        return pg_connect(url, database)
    return mysql_connect(url, database)


def is_postgresql(url: str) -> bool:
    return urllib.parse.urlsplit(url).scheme in ("postgresql", "postgres")


def pg_connect(url: str, database: str | None = None) -> psycopg.Connection:
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qs(parts.query)
    return psycopg.connect(host=query.get("host", [parts.hostname or "127.0.0.1"])[0], port=parts.port or 5432,
                           user=urllib.parse.unquote(parts.username or "postgres"),
                           password=urllib.parse.unquote(parts.password or ""),
                           dbname=database or parts.path.lstrip("/") or "postgres", autocommit=True,
                           connect_timeout=3)


def with_database(url: str, database: str) -> str:
    """``mysql://root@host:port?q`` + ``db`` → ``mysql://root@host:port/db?q``."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, ""))


class MariaDBInstance:
    """A private mariadbd on a Unix socket in a temporary folder (stop/start keeps its data)."""

    def __init__(self) -> None:
        self.binary = _apt_install("mariadb-server", "mariadbd")
        self.dir = tempfile.mkdtemp(prefix="gchat-mariadb-")
        self.socket = os.path.join(self.dir, "mysqld.sock")
        self.process: subprocess.Popen[bytes] | None = None
        install = shutil.which("mariadb-install-db") or "/usr/bin/mariadb-install-db"
        cmd = [install, "--no-defaults", f"--datadir={self.dir}/data", "--auth-root-authentication-method=normal",
               "--skip-test-db"]
        if os.geteuid() == 0:
            cmd.append("--user=root")
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    @property
    def url(self) -> str:
        return f"mysql://root@localhost?unix_socket={urllib.parse.quote(self.socket)}"

    def start(self) -> None:
        cmd = [self.binary, "--no-defaults", f"--datadir={self.dir}/data", f"--socket={self.socket}",
               "--skip-networking", f"--pid-file={self.dir}/mysqld.pid", f"--log-error={self.dir}/error.log",
               "--innodb-buffer-pool-size=64M", "--innodb-log-file-size=16M", "--skip-log-bin",
               "--innodb-flush-log-at-trx-commit=2", "--character-set-server=utf8mb4",
               "--collation-server=utf8mb4_unicode_ci"]
        if os.geteuid() == 0:
            cmd.append("--user=root")
        self.process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_until(lambda: _answers(mysql_connect(self.url)), 60, "the throwaway MariaDB")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def shared_mariadb_url() -> str | None:
    """The MariaDB already listening, if it answers."""
    url = os.environ.get("GCHAT_TEST_MYSQL", "mysql://root@127.0.0.1:3306")
    try:
        mysql_connect(url).close()
        return url
    except pymysql.err.MySQLError:
        return None


def _postgresql_bin() -> str:
    """The folder of initdb and pg_ctl: Debian keeps one per major version."""
    def newest() -> str | None:
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
                       key=lambda p: int(p.split("/")[-3]) if p.split("/")[-3].isdigit() else 0)
        return os.path.dirname(found[-1]) if found else None

    if newest() is None:
        _apt_install("postgresql", "pg_ctlcluster")
    folder = newest()
    if folder is None:
        raise ServiceError("apt-get installed postgresql but /usr/lib/postgresql/*/bin/pg_ctl is still missing")
    return folder


class PostgreSQLInstance:
    """A private PostgreSQL cluster (initdb + pg_ctl) on a Unix socket in a temporary folder.

    PostgreSQL refuses to run as root: as root, the cluster belongs to the ``postgres`` user
    (which Debian's package creates) or to ``nobody``."""

    def __init__(self) -> None:
        self.bin = _postgresql_bin()
        self.dir = tempfile.mkdtemp(prefix="gchat-pg-")
        self.data = os.path.join(self.dir, "data")
        with socket.socket() as sock:  # the port names the socket file (.s.PGSQL.<port>)
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.owner: str | None = None
        if os.geteuid() == 0:
            for name in ("postgres", "nobody"):
                try:
                    entry = pwd.getpwnam(name)
                except KeyError:
                    continue
                self.owner = name
                os.chown(self.dir, entry.pw_uid, entry.pw_gid)
                break
            else:
                raise ServiceError("no user to run PostgreSQL as (it refuses root): create 'postgres'")
        self._run([os.path.join(self.bin, "initdb"), "-D", self.data, "-U", "postgres", "--auth=trust",
                   "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"])

    def _run(self, cmd: list[str], **kw: Any) -> None:
        if self.owner:
            cmd = ["runuser", "-u", self.owner, "--", *cmd]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@localhost:{self.port}?host={urllib.parse.quote(self.dir)}"

    def start(self) -> None:
        options = (f"-k {self.dir} -p {self.port} -c listen_addresses='' -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off -c shared_buffers=32MB")
        self._run([os.path.join(self.bin, "pg_ctl"), "-D", self.data, "-l", os.path.join(self.dir, "server.log"),
                   "-o", options, "-w", "-t", "60", "start"])
        _wait_until(lambda: _answers(pg_connect(self.url)), 30, "the throwaway PostgreSQL")

    def stop(self) -> None:
        if os.path.exists(os.path.join(self.data, "postmaster.pid")):
            self._run([os.path.join(self.bin, "pg_ctl"), "-D", self.data, "-m", "fast", "-w", "stop"])

    def destroy(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


def shared_postgresql_url() -> str | None:
    """The PostgreSQL already listening, if it answers."""
    url = os.environ.get("GCHAT_TEST_PG", "postgresql://postgres@127.0.0.1:5432")
    try:
        pg_connect(url).close()
        return url
    except psycopg.Error:
        return None


class RedisInstance:
    """A private redis-server on a Unix socket, keeping nothing on disk."""

    def __init__(self) -> None:
        self.binary = _apt_install("redis-server", "redis-server")
        self.dir = tempfile.mkdtemp(prefix="gchat-redis-")
        self.socket = os.path.join(self.dir, "redis.sock")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}?db=0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, "--port", "0", "--unixsocket", self.socket, "--save", "", "--appendonly", "no",
             "--dir", self.dir], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def ping() -> bool:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.connect(self.socket)
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")

        _wait_until(ping, 20, "the throwaway Redis")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def shared_redis_url() -> str | None:
    url = os.environ.get("GCHAT_TEST_REDIS", "redis://127.0.0.1:6379/0")
    parts = urllib.parse.urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            if sock.recv(16).startswith(b"+PONG"):
                return url
    except OSError:
        pass
    return None
