"""gchat: real-time chat for Moodle sites (Tornado, WebSocket + long-poll)."""
import os
import shutil

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py


class BuildWithAssets(build_py):
    """Copy the top-level static/ and templates/ into the built package as gchat/_data/."""

    def run(self) -> None:
        super().run()
        here = os.path.dirname(os.path.abspath(__file__))
        for name in ("static", "templates"):
            target = os.path.join(self.build_lib, "gchat", "_data", name)
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(os.path.join(here, name), target)


setup(
    name="gchat",
    version="0.1.0",
    description="Real-time chat server for Moodle sites: buddy list and docked chat windows",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="GPL-3.0-or-later",
    python_requires=">=3.11",
    packages=find_packages(include=["gchat", "gchat.*"]),
    # static/ and templates/ live at the top of the checkout; BuildWithAssets installs them
    # as gchat/_data/ so that `pip install .` finds them too (see gchat/paths.py).
    cmdclass={"build_py": BuildWithAssets},
    install_requires=[
        "tornado>=6.4",         # HTTP, WebSocket, IOLoop
        "PyMySQL>=1.1",         # pure-Python MySQL/MariaDB driver
        # PostgreSQL, Moodle's other main engine: psycopg 3 is the maintained PostgreSQL driver
        # (DB-API 2, so DBUtils pools it like PyMySQL); [binary] brings libpq, no compiler needed.
        "psycopg[binary]>=3.1",
        "DBUtils>=3.0",         # PooledDB: a thread-safe connection pool
        "itsdangerous>=2.1",    # signed, expiring tokens
    ],
    extras_require={
        "redis": ["redis>=5.0"],                    # scale-out broker, Moodle 4.5+ Redis session store
        # moodle_sessions = redis://…?compressor=zstd ($CFG->session_redis_compressor = 'zstd'):
        # Python's standard library has no zstd before 3.14; zstandard is the maintained binding.
        "zstd": ["redis>=5.0", "zstandard>=0.22"],
        "metrics": ["prometheus-client>=0.19"],     # /gchat/metrics
        "test": [
            "pytest>=8",
            "pytest-tornado>=0.8",
            "hypothesis>=6",
            "playwright>=1.40",     # drives Debian's Chromium; never downloads a browser
            "pyjsparser>=2.7",      # ES5 syntax check of static/
            "axe-playwright-python>=0.1.8",  # ships axe-core: WCAG checks of the widget, no CDN
            "redis>=5.0",
            "zstandard>=0.22",      # Redis session store tests with compressor=zstd
            "prometheus-client>=0.19",
            # tests/test_xmldb.py builds Moodle's real schemas on PostgreSQL too (psycopg 3: the
            # maintained PostgreSQL driver, with wheels that bundle libpq).
            "psycopg[binary]>=3.1",
            # tests/test_supervisord.py runs gchat under a real supervisord, as conf/supervisord.conf does.
            "supervisor>=4.2",
            # tools/test checks types and style before the tests (setup.cfg, ruff.toml); pinned,
            # because a new release of either may add checks that fail code which was fine.
            "mypy==2.4.1",
            "types-PyMySQL",
            "ruff==0.17.6",
        ],
        # tools/bench.py: the python-socketio baseline server, a faster loop for the load
        # generator (optional: plain asyncio without it), and py-spy for --profile.
        "bench": ["python-socketio>=5.10", "uvloop>=0.19", "py-spy>=0.3.14"],
    },
    entry_points={"console_scripts": ["gchat=gchat.main:main"]},
)
