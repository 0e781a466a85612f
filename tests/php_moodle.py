"""Moodle sessions written by real PHP (tests/php/moodle_session.php): PHP's session module, its
files handler and the phpredis extension produce every byte gchat later reads; Python only
passes parameters and, for the database store, puts PHP's ``sessdata`` into the row.

php-cli, php-redis and php-igbinary are Debian packages; tools/test installs them (as
tests/services.py does for servers, this module apt-get installs them when root and missing).
Nothing is skipped: without PHP the tests fail loudly.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import time
from typing import Any

from tests.services import ServiceError, _apt_install

SCRIPT = os.path.join(os.path.dirname(__file__), "php", "moodle_session.php")
PACKAGES = {"redis": "php-redis", "igbinary": "php-igbinary"}


def php_binary() -> str:
    php = shutil.which("php") or _apt_install("php-cli", "php")
    modules = subprocess.run([php, "-m"], capture_output=True, text=True, check=True).stdout.split()
    missing = [package for module, package in PACKAGES.items() if module not in modules]
    if missing:
        if os.geteuid() != 0:
            raise ServiceError(f"PHP lacks {', '.join(missing)} and we are not root to apt-get install them")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, env=env, stdout=subprocess.DEVNULL)
    return php


class Php:
    """One PHP session writer per test run (the binary is looked up once)."""

    def __init__(self) -> None:
        self.binary = php_binary()

    def run(self, request: dict[str, Any]) -> dict[str, Any]:
        done = subprocess.run([self.binary, "-d", "display_errors=stderr", "-d", "error_reporting=-1", SCRIPT],
                              input=json.dumps(request), capture_output=True, text=True, timeout=60)
        if done.returncode != 0 or done.stderr.strip():
            raise AssertionError(f"PHP failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")
        return json.loads(done.stdout)

    # -- the database store ({sessions}.sessdata) --------------------------------------------------------

    def db_login(self, site: Any, user: int, *, mfa: bool | None = None, loginas: int | None = None,
                 age: int = 0, state: int = 0) -> str:
        """A login as the database handler leaves it: the row, then sessdata written at the request's end."""
        sid = site.login(user, state=state, age=age)
        out = self.run({"action": "login", "store": "database", "sid": sid, "userid": user, "mfa": mfa,
                        "loginas": loginas})
        site.execute("UPDATE {p}sessions SET sessdata = %s WHERE sid = %s", (out["sessdata"], sid))
        return sid

    def db_page(self, site: Any, sid: str, *, pass_mfa: bool = False) -> None:
        """A later page of that session (tool_mfa marks the pass on it)."""
        current = site.rows("SELECT sessdata FROM {p}sessions WHERE sid = %s", (sid,))[0][0]
        out = self.run({"action": "page", "store": "database", "sid": sid, "sessdata": current, "pass_mfa": pass_mfa})
        site.execute("UPDATE {p}sessions SET sessdata = %s WHERE sid = %s", (out["sessdata"], sid))

    # -- the file handler ---------------------------------------------------------------------------------

    def file_login(self, directory: str, user: int, *, sid: str | None = None, mfa: bool | None = None,
                   loginas: int | None = None, age: int = 0) -> str:
        sid = sid or secrets.token_hex(13)
        self.run({"action": "login", "store": "files", "dir": directory, "sid": sid, "userid": user, "mfa": mfa,
                  "loginas": loginas, "mtime": int(time.time()) - age})
        return sid

    def file_page(self, directory: str, sid: str, *, pass_mfa: bool = False) -> None:
        self.run({"action": "page", "store": "files", "dir": directory, "sid": sid, "pass_mfa": pass_mfa})

    def file_logout(self, directory: str, sid: str) -> None:
        self.run({"action": "logout", "store": "files", "dir": directory, "sid": sid})

    # -- Moodle 4.5+'s Redis store ----------------------------------------------------------------------

    def redis_login(self, conf: dict[str, Any], user: int, *, sid: str | None = None, mfa: bool | None = None,
                    loginas: int | None = None, age: int = 0, record_user: int | None = None) -> str:
        sid = sid or secrets.token_hex(13)
        self.run({"action": "login", "store": "redis", "redis": conf, "sid": sid, "userid": user, "mfa": mfa,
                  "loginas": loginas, "time": int(time.time()) - age,
                  "recorduser": user if record_user is None else record_user})
        return sid

    def redis_page(self, conf: dict[str, Any], sid: str, *, pass_mfa: bool = False) -> None:
        self.run({"action": "page", "store": "redis", "redis": conf, "sid": sid, "pass_mfa": pass_mfa})

    def redis_logout(self, conf: dict[str, Any], sid: str) -> None:
        self.run({"action": "logout", "store": "redis", "redis": conf, "sid": sid})

    def sample(self, **spec: Any) -> dict[str, Any]:
        return self.run({"action": "sample", "userid": 42, **spec})
