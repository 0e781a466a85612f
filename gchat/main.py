"""Command line: ``gchat [serve|initdb|check] [--setting=value ...]``.

``python gchat/main.py``, ``python -m gchat`` and the ``gchat`` console script are the same
program. A wrong setting, an unreachable database or missing tables stop it with one line on
stderr and exit status 2 — never a traceback.
"""

from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as a script from a checkout: python gchat/main.py
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import asyncio
import gc
import json
import logging
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn

from gchat.app import RoutesFor, Services, build_services, make_app, make_server, open_database
from gchat.config import ConfigError, Settings, load_settings
from gchat.db import Query
from gchat.demo import create_moodle_schema, seed
from gchat.errors import Unavailable
from gchat.store import ChatStore

log = logging.getLogger("gchat")

USAGE = """usage: gchat [serve|initdb|check|import-block-gchat|privacy] [--setting=value ...] [--config=FILE]

  serve    run the chat server (the default); without --db_url, the embedded demo
  initdb   create gchat's tables in the configured database, then exit (safe to run twice)
  check    validate a configuration against the Moodle database and print advice
  import-block-gchat
           import the chat history of the old block_gchat plugin (safe to run twice)
  privacy export --user ID
           print every conversation and message of Moodle user ID as JSON
  privacy delete --user ID
           erase every conversation and message of Moodle user ID (and the peer's side of them)

Settings (also GCHAT_<NAME> in the environment, or 'name = value' in the config file):
"""


CLOSE_CONNECTIONS_SECS = 4.0
# Python's cycle collector, set for a long-running server: a full collection walks every tracked
# object and holds every message meanwhile — 28-30 ms each, 80 of them in four minutes of benchmark
# load with Python's defaults (700, 10, 10), collecting nothing; 0.4 s each with 20,000 clients
# connected. What start-up built is frozen out of the collections, and the young generation is
# collected after 10,000 allocations: 3-5 full collections in the same load, the closed loop's p99
# from 26 to 14-16 ms; 6 instead of 43 while 20,000 clients connect (docs/performance.md).
GC_THRESHOLDS = (10_000, 20, 20)


class Fatal(Exception):
    """Stops the program with one line on stderr and exit status 2."""


@dataclass(frozen=True)
class Embedding:
    """What a program that runs gchat's server may add (tools/benchmark): routes of its own
    over the services, and options for the database connection pool."""

    routes: RoutesFor | None = None
    pool_options: Mapping[str, Any] = field(default_factory=dict)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def prepare(settings: Settings, embedding: Embedding = Embedding()) -> Services:
    """Open the database and check it can serve; create and seed it in demo mode."""
    db = open_database(settings, **embedding.pool_options)
    services = build_services(settings, db=db)
    try:
        if settings.is_demo_db:
            def init_demo(q: Query) -> None:
                create_moodle_schema(q)
                seed(q)
                services.store.create_tables(q)
            db.run_sync(init_demo)
        missing = db.run_sync(services.moodle.missing_tables)
        if missing:
            raise Fatal(f"db_url: {db.where} has no Moodle tables {', '.join(settings.db_prefix + m for m in missing)} "
                        f"(is db_prefix '{settings.db_prefix}' right?)")
        chat_missing = db.run_sync(services.store.missing_tables)
        if chat_missing:
            raise Fatal(f"gchat's tables ({', '.join(settings.db_prefix + m for m in chat_missing)}) are missing in "
                        f"{db.where}; create them with: gchat initdb (same settings)")
    except Unavailable as exc:
        db.close()
        raise Fatal(f"db_url: {_one_line(exc)}") from None
    except Fatal:
        db.close()
        raise
    return services


async def serve(settings: Settings, embedding: Embedding = Embedding()) -> None:
    services = prepare(settings, embedding)
    settings = services.settings
    app = make_app(services, extra_routes=embedding.routes)
    server = make_server(app, settings)
    try:
        server.listen(settings.port, settings.address)
    except OSError as exc:
        services.db.close()
        raise Fatal(f"port: cannot listen on {settings.address}:{settings.port}: {exc.strerror}") from None
    await services.start()
    settle_garbage_collector()
    mode = f"demo (SQLite at {services.db.where})" if settings.is_demo_db else services.db.where
    log.info("gchat listening on http://%s:%d%s — database %s, broker %s", settings.address, settings.port,
             settings.url_prefix, mode, services.broker.name)
    if settings.demo:
        log.info("demo pages at http://%s:%d%s/demo — anyone can log in as anyone: never on a real site",
                 settings.address, settings.port, settings.url_prefix)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()

    log.info("shutting down: no new connections; telling clients to reconnect")
    server.stop()
    await services.stop()
    try:
        await asyncio.wait_for(server.close_all_connections(), timeout=CLOSE_CONNECTIONS_SECS)
    except TimeoutError:
        log.warning("some connections did not close in time")
    await services.aclose()
    log.info("stopped")


def settle_garbage_collector() -> None:
    """Once the server is up: what start-up built leaves the collector's view, fewer collections."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def initdb(settings: Settings) -> None:
    db = open_database(settings)
    services = build_services(settings, db=db)
    try:
        db.run_sync(services.store.create_tables)
    except Unavailable as exc:
        raise Fatal(f"db_url: {_one_line(exc)}") from None
    finally:
        db.close()
    print(f"gchat tables ready in {db.where} (prefix {settings.db_prefix})")


def check(settings: Settings) -> None:
    from gchat.check import run_check

    ok = run_check(settings, open_database(settings), print)
    if not ok:
        raise SystemExit(1)


def import_block_gchat(settings: Settings) -> None:
    from gchat.import_block_gchat import ImportFailed, run_command

    try:
        run_command(open_database(settings))
    except ImportFailed as exc:
        raise Fatal(str(exc)) from None


def privacy_arguments(args: list[str]) -> tuple[str, int, list[str]]:
    """``export|delete --user ID`` off the front of ``gchat privacy``'s arguments; the rest are
    settings."""
    if not args or args[0] not in ("export", "delete"):
        raise Fatal("privacy: say what to do: gchat privacy export --user ID, or gchat privacy delete --user ID")
    action, rest = args[0], list(args[1:])
    user: str | None = None
    for index, arg in enumerate(rest):
        if arg == "--user" and index + 1 < len(rest):
            user = rest[index + 1]
            del rest[index:index + 2]
            break
        if arg.startswith("--user="):
            user = arg[len("--user="):]
            del rest[index]
            break
    if user is None or not (user.isascii() and user.isdigit()) or int(user) <= 0:
        raise Fatal(f"privacy {action}: --user needs a Moodle user id (a positive number)")
    return action, int(user), rest


def privacy(settings: Settings, action: str, user: int) -> None:
    from gchat.privacy import delete_user, export_user

    db = open_database(settings)
    try:
        missing = db.run_sync(ChatStore(db).missing_tables)
        if missing:
            raise Fatal(f"gchat's tables are missing in {db.where} (is db_prefix '{settings.db_prefix}' right?)")
        if action == "export":
            export_user(db, user, sys.stdout)
        else:
            report = asyncio.run(delete_user(db, user))
            print(json.dumps({"user": user, "deleted": report.as_dict()}))
    except Unavailable as exc:
        raise Fatal(f"db_url: {_one_line(exc)}") from None
    finally:
        db.close()


COMMANDS: dict[str, Callable[[Settings], None]] = {"initdb": initdb, "check": check,
                                                   "import-block-gchat": import_block_gchat}


def main(argv: list[str] | None = None, embedding: Embedding = Embedding()) -> NoReturn:
    args = list(sys.argv[1:] if argv is None else argv)
    command = "serve"
    if args and not args[0].startswith("-"):
        command = args.pop(0)
    if command in ("help", "-h", "--help") or "--help" in args or "-h" in args:
        from gchat.config import render_help

        print(USAGE + render_help())
        raise SystemExit(0)
    try:
        if command not in ("serve", "privacy", *COMMANDS):
            raise Fatal(f"unknown command {command!r} ({', '.join(('serve', *COMMANDS, 'privacy'))})")
        action, user = "", 0
        if command == "privacy":
            action, user, args = privacy_arguments(args)
        settings = load_settings(args)
        logging.basicConfig(level=settings.log_level.upper(),
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        if command == "serve":
            asyncio.run(serve(settings, embedding))
        elif command == "privacy":
            privacy(settings, action, user)
        else:
            COMMANDS[command](settings)
    except (ConfigError, Fatal) as exc:
        print(f"gchat: {_one_line(exc)}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        pass
    raise SystemExit(0)


if __name__ == "__main__":
    main()
