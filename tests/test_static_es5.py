"""Every JavaScript file in static/ must be plain ES5 (the widget runs in old browsers too).

pyjsparser is an ECMAScript 5.1 parser: it rejects arrow functions, classes, template literals,
for-of, spread, destructuring, generators, modules and async functions outright. It still
*accepts* a few ES2015 forms (``let``/``const``, default parameters, shorthand and method
properties, computed keys, 0b/0o literals, the u/y regex flags, ``\\u{...}`` escapes), so the
checker also walks the syntax tree and refuses those. The tests at the bottom prove that the
checker fails on each form, so this test can fail.
"""

import pathlib
import re

import pytest
from pyjsparser import PyJsParser

STATIC_DIR = pathlib.Path(__file__).resolve().parent.parent / "static"


def _walk(node):
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def es5_problems(source: str) -> list[str]:
    """What in ``source`` is not ES5; an empty list when it is all ES5."""
    try:
        tree = PyJsParser().parse(source)
    except Exception as exc:  # pyjsparser raises its own JsSyntaxError (an Exception subclass)
        return [f"not ES5.1: {exc}"]
    problems = []
    for node in _walk(tree):
        kind = node.get("type")
        if kind == "VariableDeclaration" and node.get("kind") != "var":
            problems.append(f"'{node.get('kind')}' declaration (use var)")
        elif kind in ("FunctionDeclaration", "FunctionExpression"):
            if node.get("defaults"):
                problems.append("default parameter value")
            if node.get("generator"):
                problems.append("generator function")
        elif kind == "Property":
            if node.get("shorthand"):
                problems.append("shorthand property")
            if node.get("method"):
                problems.append("method definition in an object literal")
            if node.get("computed"):
                problems.append("computed property key")
        elif kind == "Literal":
            raw = str(node.get("raw", ""))
            if re.match(r"0[bBoO]", raw):
                problems.append(f"binary/octal literal {raw}")
            regex = node.get("regex")
            if regex and set(regex.get("flags", "")) - set("gim"):
                problems.append(f"regular expression flags {regex.get('flags')!r}")
            if raw[:1] in "'\"" and re.search(r"(?<!\\)(\\\\)*\\u\{", raw):
                problems.append("\\u{...} escape")
    return problems


def _js_files():
    return sorted(STATIC_DIR.rglob("*.js"))


def test_static_has_javascript():
    assert _js_files(), f"no .js files under {STATIC_DIR}"


@pytest.mark.parametrize("path", _js_files(), ids=lambda p: p.name)
def test_file_is_es5(path):
    assert es5_problems(path.read_text(encoding="utf-8")) == []


ES5_SNIPPETS = [
    "var x = 1; function f(a, b) { return a + b; }",
    "var o = {'class': 1, default: 2, get n() { return 3; }, set n(v) {}}; o['with'] = 4;",
    "for (var k in o) { if (o.hasOwnProperty(k)) { continue; } }",
    "var r = /a[/]b\\u0041/gim; var s = 'x\\u0041'.replace(/\\s+/g, ' ');",
    "try { throw new Error('x'); } catch (e) {} finally {}",
    "var a = [1, 2,]; var f = function named() { 'use strict'; return this; };",
]

LATER_SNIPPETS = {
    "let": "let x = 1;",
    "const": "const x = 1;",
    "let in for": "for (let i = 0; i < 2; i++) {}",
    "arrow": "var f = (a) => a;",
    "arrow, bare parameter": "var f = a => a * 2;",
    "class": "class A { m() {} }",
    "class expression": "var A = class {};",
    "template literal": "var s = `hi`;",
    "template with substitution": "var s = `hi ${name}`;",
    "for-of": "for (var x of y) {}",
    "spread call": "f(...args);",
    "spread array": "var a = [...b];",
    "rest parameter": "function f(...rest) {}",
    "destructuring": "var {a, b} = o;",
    "array destructuring": "var [a, b] = list;",
    "default parameter": "function f(a = 1) {}",
    "shorthand property": "var o = {a, b};",
    "method": "var o = {f() {}};",
    "computed key": "var o = {[k]: 1};",
    "generator": "function* g() {}",
    "async function": "async function f() {}",
    "exponent operator": "var x = 2 ** 3;",
    "binary literal": "var x = 0b101;",
    "octal literal": "var x = 0o17;",
    "sticky regex": "var r = /a/y;",
    "unicode regex": "var r = /a/u;",
    "code point escape": "var s = '\\u{1F600}';",
    "optional chaining": "var v = o?.a;",
    "nullish coalescing": "var v = a ?? b;",
    "import": "import a from 'b';",
    "export": "export var a = 1;",
}


@pytest.mark.parametrize("snippet", ES5_SNIPPETS)
def test_checker_accepts_es5(snippet):
    assert es5_problems(snippet) == []


@pytest.mark.parametrize("name", sorted(LATER_SNIPPETS))
def test_checker_rejects_later_syntax(name):
    assert es5_problems(LATER_SNIPPETS[name]), f"{name} slipped through the ES5 check"


def test_checker_rejects_a_whole_file_with_one_es2015_line():
    source = "var ok = 1;\nfunction f() {\n  var a = 1;\n  const b = 2;\n  return a + b;\n}\n"
    assert es5_problems(source) == ["'const' declaration (use var)"]
