"""The ``moodle_sessions`` setting: where Moodle keeps its sessions, as gchat/config.py parses it.

A value type of its own (like ``DbUrl``), apart from gchat/sessions.py, so that the settings
need none of the stores (see gchat/sessions.py for what each kind means).
"""

from __future__ import annotations

import dataclasses
import urllib.parse
from dataclasses import dataclass

SERIALIZERS = ("php", "igbinary")
COMPRESSORS = ("none", "gzip", "zstd")



@dataclass(frozen=True)
class SessionsSpec:
    """A parsed ``moodle_sessions`` value (the Redis password is never shown by ``describe``)."""

    kind: str = "database"  # database | files | redis
    directory: str = ""
    hosts: tuple[tuple[str, int], ...] = ()
    socket: str = ""
    db: int = 0
    prefix: str = ""
    username: str | None = None
    password: str | None = None
    serializer: str = "php"
    compressor: str = "none"
    tls: bool = False
    ssl_ca_certs: str | None = None
    ssl_cert_reqs: str = "required"

    @property
    def cluster(self) -> bool:
        return len(self.hosts) > 1

    def with_legacy_dir(self, directory: str) -> SessionsSpec:
        """``moodle_session_dir = <dir>`` is the old name of ``moodle_sessions = files:<dir>``."""
        if directory and self.kind == "database":
            return dataclasses.replace(self, kind="files", directory=directory)
        return self

    def where(self) -> str:
        if self.socket:
            return f"unix://{self.socket} db {self.db}"
        hosts = ",".join(f"{h}:{p}" for h, p in self.hosts)
        scheme = "rediss" if self.tls else "redis"
        if self.cluster:
            return f"{scheme}://{hosts} (Redis Cluster of {len(self.hosts)} seed nodes)"
        return f"{scheme}://{hosts}/{self.db}"

    def describe(self) -> str:
        if self.kind == "files":
            return f"files in {self.directory}"
        if self.kind == "redis":
            return (f"Moodle's Redis store at {self.where()}, key prefix '{self.prefix}', "
                    f"serializer {self.serializer}, compressor {self.compressor}")
        return "the sessions table"


def _split_host(text: str, default_port: int) -> tuple[str, int]:
    text = text.strip()
    if text.startswith("["):  # [::1]:6379
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port_text = text.rpartition(":") if text.count(":") == 1 else (text, "", "")
    if not host:
        raise ValueError(f"no host in {text!r}")
    try:
        port = int(port_text) if port_text else default_port
    except ValueError:
        raise ValueError(f"the port of {text!r} is not a number") from None
    if not 0 < port < 65536:
        raise ValueError(f"the port of {text!r} is out of range")
    return host, port


def parse_moodle_sessions(text: str) -> SessionsSpec:
    """``database``, ``files:<dir>``, or ``redis://[user:password@]host[:port][,host:port…]/db?prefix=…``
    (also ``rediss://`` for TLS and ``unix:///path/redis.sock?db=0&prefix=…``)."""
    text = text.strip()
    if text in ("", "database", "db"):
        return SessionsSpec()
    if text.startswith("files:"):
        directory = text[len("files:"):].strip()
        if not directory:
            raise ValueError("files: needs Moodle's session folder, e.g. files:/var/moodledata/sessions")
        return SessionsSpec(kind="files", directory=directory)
    scheme, sep, rest = text.partition("://")
    if not sep or scheme not in ("redis", "rediss", "unix"):
        raise ValueError("expected database, files:<dir> or redis://host:6379/0?prefix=<$CFG->session_redis_prefix>")
    netloc, _, path_query = rest.partition("/") if scheme != "unix" else ("", "", rest)
    path, _, query_text = path_query.partition("?")
    query = urllib.parse.parse_qs(query_text, keep_blank_values=True)
    known = {"prefix", "password", "username", "serializer", "compressor", "db", "ssl_ca_certs", "ssl_cert_reqs"}
    unknown = sorted(set(query) - known)
    if unknown:
        raise ValueError(f"unknown parameter {unknown[0]!r} (known: {', '.join(sorted(known))})")

    def param(name: str, default: str | None = None) -> str | None:
        return query[name][-1] if name in query else default

    username = password = None
    if "@" in netloc:
        userinfo, netloc = netloc.rsplit("@", 1)
        user_text, colon, password_text = userinfo.partition(":")
        username = urllib.parse.unquote(user_text) or None
        password = urllib.parse.unquote(password_text) if colon else None
    password = param("password", password)
    username = param("username", username)
    serializer = (param("serializer", "php") or "php").lower()
    if serializer not in SERIALIZERS:
        raise ValueError("serializer is php or igbinary ($CFG->session_redis_serializer_use_igbinary)")
    compressor = (param("compressor", "none") or "none").lower()
    if compressor not in COMPRESSORS:
        raise ValueError("compressor is none, gzip or zstd ($CFG->session_redis_compressor)")
    if compressor == "zstd":
        try:
            import zstandard  # noqa: F401
        except ImportError:
            raise ValueError("compressor=zstd needs the zstandard package: pip install 'gchat[zstd]'") from None
    try:
        import redis  # noqa: F401
    except ImportError:
        raise ValueError("the Redis session store needs the redis package: pip install 'gchat[redis]'") from None
    cert_reqs = (param("ssl_cert_reqs", "required") or "required").lower()
    if cert_reqs not in ("none", "optional", "required"):
        raise ValueError("ssl_cert_reqs is none, optional or required")
    common = dict(kind="redis", prefix=param("prefix", "") or "", username=username, password=password,
                  serializer=serializer, compressor=compressor, ssl_ca_certs=param("ssl_ca_certs"),
                  ssl_cert_reqs=cert_reqs)
    if scheme == "unix":
        socket_path = urllib.parse.unquote(path if path.startswith("/") else "/" + path)
        if socket_path == "/":
            raise ValueError("unix:// needs the socket's path, e.g. unix:///run/redis/redis.sock?db=0")
        return SessionsSpec(socket=socket_path, db=_db_number(param("db", "0")), **common)  # type: ignore[arg-type]
    if not netloc:
        raise ValueError("no host: redis://host:6379/0?prefix=…")
    hosts = tuple(_split_host(part, 6379) for part in netloc.split(",") if part.strip())
    db_text = path.strip("/") or param("db", "0")
    db = _db_number(db_text)
    if len(hosts) > 1 and db != 0:
        raise ValueError("a Redis Cluster (several hosts) has only database 0")
    return SessionsSpec(hosts=hosts, db=db, tls=scheme == "rediss", **common)  # type: ignore[arg-type]


def _db_number(text: str | None) -> int:
    try:
        value = int(text or "0")
    except ValueError:
        raise ValueError(f"the database number {text!r} is not a number") from None
    if value < 0:
        raise ValueError("the database number must not be negative")
    return value
