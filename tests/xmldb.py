"""Moodle's XMLDB schema files (install.xml) turned into DDL for MySQL/MariaDB and PostgreSQL.

The tests use it to create the tables a real Moodle install creates, from the install.xml
subsets kept in tests/fixtures/xmldb/ (each names the Moodle revision it came from). The
mapping follows Moodle's own generators, read in moodle/moodle:

* ``lib/ddl/sql_generator.php`` (the base class): ``getCreateTableSQL`` writes the columns,
  then the PRIMARY KEY constraint (``$primary_keys = true``); unique keys are created as unique
  indexes and foreign keys as plain indexes, because ``$unique_keys`` and ``$foreign_keys`` are
  false; ``getFieldSQL`` writes ``type NOT NULL DEFAULT x`` (``$default_after_null``) and, for a
  SEQUENCE field, the engine's sequence; ``getDefaultValue`` gives a NOT NULL char column
  without a default ``DEFAULT ''`` (``$default_for_char = ''`` in both generators) and never a
  default to a text or binary column that has none.
* ``public/lib/ddl/mysql_sql_generator.php`` ``getTypeSQL``: int length > 9 BIGINT, > 6 INT,
  > 4 MEDIUMINT, > 2 SMALLINT, else TINYINT, always with ``(length)``; number ``NUMERIC(l,d)``;
  float DOUBLE, or FLOAT when decimals < 6, with ``(l,d)``; char ``VARCHAR(n)`` and text
  LONGTEXT, both with the database collation; binary LONGBLOB; datetime DATETIME; the sequence
  is ``auto_increment``; ``getCreateTableSQL`` adds ENGINE and the default collation, and
  ``get_row_format_sql`` ROW_FORMAT=Dynamic for utf8mb4. (Moodle folds the indexes into the
  CREATE TABLE there; separate CREATE INDEX statements give the same table.)
* ``public/lib/ddl/postgres_sql_generator.php`` ``getTypeSQL``: int length > 9 BIGINT, > 4
  INTEGER, else SMALLINT; number NUMERIC(l,d); float DOUBLE PRECISION, or REAL when decimals < 6;
  char VARCHAR(n); text TEXT; binary BYTEA; datetime TIMESTAMP; the sequence is BIGSERIAL
  (SERIAL for length <= 9, ``$sequence_name_small``) and nothing else on that column
  (``$sequence_only``); an index with ``HINTS="varchar_pattern_ops"`` gets a second
  ``<name>_pattern`` index using that operator class (``getCreateIndexSQL``).

Older XMLDB files (Moodle 2.0-2.2) also carry ``UNSIGNED="true"`` and text/binary lengths
``small``/``medium``/``big``: Moodle up to 2.2 created those as ``UNSIGNED`` integers and as
TEXT/MEDIUMTEXT/LONGTEXT on MySQL (shared/moodle-facts.md); 2.3 dropped unsigned
("unsigned is not supported any more since moodle 2.3", sql_generator.php). Both are honoured.

Object names follow ``sql_generator::getNameForObject``: the prefix, the table name's words cut
to 4 letters, ``_``, the field names' words cut to 3 letters, ``_`` and a suffix (pk, ix, uix),
at most 30 characters, made unique within the schema.
"""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from collections.abc import Callable

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "xmldb")
ENGINES = ("mysql", "postgresql")
NAME_MAX = 30  # sql_generator::$names_max_length
MYSQL_COLLATION = "utf8mb4_unicode_ci"  # what Moodle's installer picks for a utf8mb4 MariaDB/MySQL


class XmldbError(ValueError):
    """An install.xml that this converter cannot turn into DDL (wrong engine, bad definition)."""


@dataclass(frozen=True)
class Field:
    name: str
    type: str  # int, number, float, char, text, binary, datetime
    length: str | None
    decimals: str | None
    notnull: bool
    sequence: bool
    default: str | None
    unsigned: bool


@dataclass(frozen=True)
class Index:
    fields: tuple[str, ...]
    unique: bool
    hints: tuple[str, ...] = ()


@dataclass(frozen=True)
class Table:
    name: str
    comment: str
    fields: tuple[Field, ...]
    primary: tuple[str, ...]
    indexes: tuple[Index, ...]  # the INDEXES, then the indexes keys need (unique, foreign)


@dataclass
class _Names:
    """Object names already handed out (getNameForObject keeps them unique per request)."""

    used: set[str] = field(default_factory=set)

    def make(self, prefix: str, table: str, fields: tuple[str, ...], suffix: str) -> str:
        base = "".join(part[:4] for part in table.split("_")) + "_"
        base += "".join(part[:3] for f in fields for part in f.split("_"))
        base = (prefix + base)[: NAME_MAX - len(suffix) - 1]
        name, n = f"{base}_{suffix}", 0
        while name in self.used:
            n += 1
            name = f"{base[: NAME_MAX - len(suffix) - 1 - len(str(n))]}{n}_{suffix}"
        self.used.add(name)
        return name


def _fields(text: str | None) -> tuple[str, ...]:
    return tuple(part.strip() for part in (text or "").split(",") if part.strip())


def parse(path: str) -> list[Table]:
    """The tables of an install.xml, in file order."""
    root = ElementTree.parse(path).getroot()
    if root.tag != "XMLDB":
        raise XmldbError(f"{path}: not an XMLDB file (root element {root.tag})")
    tables = []
    for node in root.iter("TABLE"):
        fields = tuple(
            Field(name=f.get("NAME", ""), type=f.get("TYPE", ""), length=f.get("LENGTH"),
                  decimals=f.get("DECIMALS"), notnull=f.get("NOTNULL") == "true",
                  sequence=f.get("SEQUENCE") == "true", default=f.get("DEFAULT"),
                  unsigned=f.get("UNSIGNED") == "true")
            for f in node.iter("FIELD"))
        primary: tuple[str, ...] = ()
        indexes = [Index(_fields(i.get("FIELDS")), i.get("UNIQUE") == "true", _fields(i.get("HINTS")))
                   for i in node.iter("INDEX")]
        for key in node.iter("KEY"):
            kind, cols = key.get("TYPE"), _fields(key.get("FIELDS"))
            if kind == "primary":
                primary = cols
            elif kind in ("unique", "foreign-unique"):
                indexes.append(Index(cols, True))
            elif kind == "foreign":
                indexes.append(Index(cols, False))
            else:
                raise XmldbError(f"{path}: table {node.get('NAME')}: unknown key type {kind!r}")
        known = {f.name for f in fields}
        for cols in [primary, *(i.fields for i in indexes)]:
            if not set(cols) <= known:
                raise XmldbError(f"{path}: table {node.get('NAME')}: key or index on unknown field(s) "
                                 f"{sorted(set(cols) - known)}")
        tables.append(Table(node.get("NAME", ""), node.get("COMMENT", ""), fields, primary, _dedupe(indexes)))
    return tables


def _dedupe(indexes: list[Index]) -> tuple[Index, ...]:
    """A foreign key on columns an index already covers adds nothing (Moodle checks
    index_exists before creating a key's index on upgrade; a fresh install never repeats one)."""
    seen: dict[tuple[str, ...], Index] = {}
    for index in indexes:
        if index.fields not in seen:
            seen[index.fields] = index
    return tuple(seen.values())


def _length(value: str | None, default: int) -> int:
    return int(value) if value and value.isdigit() else default


def _quote_literal(value: str, engine: str) -> str:
    """sql_generator::addslashes: MySQL also reads a backslash as an escape, PostgreSQL does not."""
    if engine == "mysql":
        value = value.replace("\\", "\\\\")
    return "'" + value.replace("'", "''") + "'"


def mysql_type(f: Field, collation: str = MYSQL_COLLATION) -> str:
    """mysql_sql_generator::getTypeSQL."""
    if f.type == "int":
        n = _length(f.length, 10)
        kind = "BIGINT" if n > 9 else "INT" if n > 6 else "MEDIUMINT" if n > 4 else "SMALLINT" if n > 2 else "TINYINT"
        return f"{kind}({n})" + (" UNSIGNED" if f.unsigned else "")
    if f.type == "number":
        return _numeric("NUMERIC", f)
    if f.type == "float":
        kind = "FLOAT" if f.decimals and 0 < int(f.decimals) < 6 else "DOUBLE"
        if f.length and f.length.isdigit():
            kind += f"({f.length},{f.decimals})" if f.decimals and int(f.decimals) else f"({f.length}, 0)"
        return kind
    if f.type == "char":
        return f"VARCHAR({_length(f.length, 255)}) COLLATE {collation}"
    if f.type == "text":
        # Before 2.3 a text field said how big it may grow; later ones are all LONGTEXT.
        kind = {"small": "TEXT", "medium": "MEDIUMTEXT"}.get(f.length or "", "LONGTEXT")
        return f"{kind} COLLATE {collation}"
    if f.type == "binary":
        return {"small": "BLOB", "medium": "MEDIUMBLOB"}.get(f.length or "", "LONGBLOB")
    if f.type == "datetime":
        return "DATETIME"
    raise XmldbError(f"field {f.name}: unknown XMLDB type {f.type!r}")


def postgres_type(f: Field) -> str:
    """postgres_sql_generator::getTypeSQL (PostgreSQL has no unsigned integers)."""
    if f.type == "int":
        n = _length(f.length, 10)
        return "BIGINT" if n > 9 else "INTEGER" if n > 4 else "SMALLINT"
    if f.type == "number":
        return _numeric("NUMERIC", f)
    if f.type == "float":
        return "REAL" if f.decimals and 0 < int(f.decimals) < 6 else "DOUBLE PRECISION"
    if f.type == "char":
        return f"VARCHAR({_length(f.length, 255)})"
    if f.type == "text":
        return "TEXT"
    if f.type == "binary":
        return "BYTEA"
    if f.type == "datetime":
        return "TIMESTAMP"
    raise XmldbError(f"field {f.name}: unknown XMLDB type {f.type!r}")


def _numeric(kind: str, f: Field) -> str:
    if f.length and f.length.isdigit():
        return f"{kind}({f.length},{f.decimals})" if f.decimals and int(f.decimals) else f"{kind}({f.length})"
    return kind


def _default(f: Field, engine: str) -> str | None:
    """sql_generator::getDefaultValue."""
    if f.default is not None:
        if f.type in ("char", "text"):
            return _quote_literal(f.default, engine)
        return f.default
    if f.type == "char" and f.notnull:
        return "''"  # $default_for_char: Moodle gives NOT NULL char columns an empty default
    return None


def _column(f: Field, engine: str, quote: Callable[[str], str]) -> str:
    if f.sequence and engine == "postgresql":
        return f"{quote(f.name)} {'SERIAL' if _length(f.length, 10) <= 9 else 'BIGSERIAL'}"
    sql = f"{quote(f.name)} {mysql_type(f) if engine == 'mysql' else postgres_type(f)}"
    if f.notnull:
        sql += " NOT NULL"
    default = _default(f, engine)
    if default is not None and not f.sequence:
        sql += f" DEFAULT {default}"
    if f.sequence:
        sql += " auto_increment"
    return sql


def table_statements(table: Table, engine: str, prefix: str, names: _Names | None = None) -> list[str]:
    """The statements Moodle runs to create one table: CREATE TABLE, its comment, its indexes."""
    if engine not in ENGINES:
        raise XmldbError(f"engine must be one of {ENGINES}, not {engine!r}")
    names = names or _Names()
    quote: Callable[[str], str] = (lambda n: f"`{n}`") if engine == "mysql" else (lambda n: f'"{n}"')
    full = quote(prefix + table.name)
    lines = [_column(f, engine, quote) for f in table.fields]
    if table.primary:
        cols = ", ".join(quote(c) for c in table.primary)
        if engine == "mysql":
            lines.append(f"CONSTRAINT PRIMARY KEY ({cols})")  # $primary_key_name = '' on MySQL
        else:
            lines.append(f"CONSTRAINT {names.make(prefix, table.name, table.primary, 'pk')} PRIMARY KEY ({cols})")
    create = f"CREATE TABLE {full} (\n    " + ",\n    ".join(lines) + "\n)"
    statements = []
    if engine == "mysql":
        create += f" ENGINE = InnoDB DEFAULT COLLATE = {MYSQL_COLLATION} ROW_FORMAT=Dynamic"
        if table.comment:
            create += f" COMMENT={_quote_literal(table.comment[:60], engine)}"
        statements.append(create)
    else:
        statements.append(create)
        if table.comment:
            statements.append(f"COMMENT ON TABLE {full} IS {_quote_literal(table.comment[:250], engine)}")
    for index in table.indexes:
        name = names.make(prefix, table.name, index.fields, "uix" if index.unique else "ix")
        cols = ", ".join(quote(c) for c in index.fields)
        statements.append(f"CREATE {'UNIQUE ' if index.unique else ''}INDEX {name} ON {full} ({cols})")
        if engine == "postgresql" and "varchar_pattern_ops" in index.hints and len(index.fields) == 1:
            statements.append(f"CREATE INDEX {name}_pattern ON {full} USING btree ({cols} varchar_pattern_ops)")
    return statements


def schema_statements(path: str, engine: str, prefix: str) -> list[str]:
    """Every statement to create the tables of one install.xml, in file order."""
    names = _Names()
    statements: list[str] = []
    for table in parse(path):
        statements += table_statements(table, engine, prefix, names)
    return statements


def schema_versions() -> list[str]:
    """The Moodle versions there is a fixture for ("2.8", "4.4", "5.2"), oldest first."""
    found = [name[: -len("-install.xml")] for name in os.listdir(FIXTURES) if name.endswith("-install.xml")]
    return sorted(found, key=lambda v: tuple(int(p) for p in v.split(".")))


def schema_path(version: str) -> str:
    path = os.path.join(FIXTURES, f"{version}-install.xml")
    if not os.path.exists(path):
        raise XmldbError(f"no Moodle schema {version!r} in tests/fixtures/xmldb (have {schema_versions()})")
    return path


def schema_release(version: str) -> str:
    """Moodle's ``$release`` for a fixture: the one its header quotes from version.php at the
    source commit, else "<version>dev" (a development revision without a stored version.php)."""
    with open(schema_path(version), encoding="utf-8") as handle:
        head = handle.read(2000)
    found = re.search(r"\$release = '([^']+)'", head)
    return " ".join(found.group(1).split()) if found else f"{version}dev"


def schema_version_number(version: str) -> str | None:
    """Moodle's ``$version`` (what ``{config}.version`` holds) for a fixture, when its header
    quotes version.php; None for a revision without one."""
    with open(schema_path(version), encoding="utf-8") as handle:
        head = handle.read(2000)
    found = re.search(r"\$version = ([0-9]+(?:\.[0-9]+)?)", head)
    return found.group(1) if found else None


def moodle_schema_statements(version: str, engine: str, prefix: str) -> list[str]:
    """The DDL a fresh Moodle ``version`` install runs on ``engine`` ("mysql" for MySQL/MariaDB,
    "postgresql") for the tables gchat reads, with table prefix ``prefix``."""
    return schema_statements(schema_path(version), engine, prefix)
