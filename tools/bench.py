#!/usr/bin/env python3
"""gchat's load benchmark: gchat against a bare Tornado relay and a python-socketio relay, on one
machine, in one run, with the server and the load generator on separate cores.

    python tools/bench.py --quick            # small numbers, ≈30 s per target: a smoke run
    python tools/bench.py                    # the full run, ≈11-13 minutes (three targets)
    python tools/bench.py --target gchat     # or tornado, socketio, all (default), or a list: gchat,tornado

The benchmark itself is the package tools/benchmark/ (also ``python -m tools.benchmark``);
the method is in docs/performance.md.
"""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from tools.benchmark.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
