"""The shape of the code (docs/design.md): imports flow one way with no circle inside gchat/,
the core knows nothing of HTTP, metrics reads the router without reaching into it, and no class
grows past about 250 lines."""

from __future__ import annotations

import ast
import os
from pathlib import Path

GCHAT = Path(__file__).resolve().parents[2] / "gchat"
MAX_CLASS_LINES = 250
# Classes over the bound, each to be split (none left: ChatStore's batch writer is gchat/message_writer.py).
KNOWN_LARGE: set[tuple[str, str]] = set()
# The router and its parts, the broker and the wire format: no HTTP, no application wiring.
CORE = ("router", "presence", "feed", "commands", "session_watch", "tasks", "ports", "limits", "wire", "broker",
        "redis_broker", "redis_link", "redis_publish", "redis_keepalive", "redis_scripts", "errors", "auth")


def modules() -> dict[str, Path]:
    found = {}
    for path in GCHAT.rglob("*.py"):
        name = ".".join(("gchat", *path.relative_to(GCHAT).with_suffix("").parts))
        found[name.removesuffix(".__init__")] = path
    return found


def gchat_imports(path: Path) -> set[str]:
    """Every gchat module ``path`` imports, anywhere in the file (TYPE_CHECKING blocks and
    imports inside functions included: a circle through them is still a circle)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in names if name.startswith("gchat")}


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: {imp for imp in gchat_imports(path) if imp in known and imp != name}
            for name, path in known.items()}


def test_no_import_circle_inside_gchat():
    edges = graph()
    state: dict[str, str] = {}
    circles = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(edges[node]):
            if state.get(nxt) == "open":
                circles.append(trail[trail.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = "done"

    for start in sorted(edges):
        if start not in state:
            visit(start, [start])
    assert circles == []


def test_the_core_knows_nothing_of_http_or_wiring():
    known = modules()
    for name in CORE:
        path = known[f"gchat.{name}"]
        imports = gchat_imports(path)
        assert not {i for i in imports if i.startswith(("gchat.transports", "gchat.app", "gchat.main",
                                                        "gchat.metrics", "gchat.demo"))}, name
        assert "tornado.web" not in path.read_text(encoding="utf-8"), name


def test_metrics_reads_the_router_without_the_application_or_private_fields():
    source = (GCHAT / "metrics.py").read_text(encoding="utf-8")
    assert "gchat.app" not in gchat_imports(GCHAT / "metrics.py")
    assert "getattr(" not in source and "._clients" not in source


def test_no_class_over_about_250_lines():
    large = []
    for path in GCHAT.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_CLASS_LINES and (path.name, node.name) not in KNOWN_LARGE:
                    large.append(f"{os.path.relpath(path, GCHAT)}:{node.name} ({lines} lines)")
    assert large == []
