"""The widget's size budget: what a browser downloads on every Moodle page stays small.

gchat.js and gchat.css together, gzipped as a web server sends them, stay under 60 KB
(issue 13); the widget is one script tag with no dependencies, so nothing else is loaded.
"""

import gzip
import pathlib
import re

STATIC = pathlib.Path(__file__).resolve().parent.parent / "static"
BUDGET_BYTES = 60 * 1024


def gzipped_size(path: pathlib.Path) -> int:
    return len(gzip.compress(path.read_bytes(), compresslevel=6))


def test_widget_stays_under_60_kb_gzipped():
    files = [STATIC / "gchat.js", STATIC / "gchat.css"]
    total = sum(gzipped_size(path) for path in files)
    assert total < BUDGET_BYTES, f"the widget is {total} bytes gzipped; the budget is {BUDGET_BYTES}"


def test_the_widget_loads_nothing_but_its_own_stylesheet():
    """No dependencies: no other script, no import, no CDN; only gchat.css from beside itself."""
    source = (STATIC / "gchat.js").read_text(encoding="utf-8")
    assert not re.search(r"createElement\(['\"]script['\"]\)|importScripts|\bimport\(", source)
    assert re.findall(r"STATIC_BASE \+ '(/[^']+)'", source) == ["/gchat.css"]
    assert not re.search(r"https?://(?!moodle\.example\.org)", source.split("*/", 1)[1])
    assert sorted(p.name for p in STATIC.iterdir()) == ["gchat.css", "gchat.js"]
