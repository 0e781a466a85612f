"""``python -m tools.benchmark``: the same as ``python tools/bench.py``."""

import sys

from tools.benchmark.cli import main

sys.exit(main())
