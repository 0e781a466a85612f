"""gchat's three tables on MySQL/MariaDB, PostgreSQL and SQLite: their DDL, and what ``gchat
initdb`` creates or brings up to date (gchat/store.py says what the tables hold)."""

from __future__ import annotations

from gchat.db import Query

TABLES = ("gchat_conversations", "gchat_members", "gchat_messages")

_MYSQL_DDL = (
    """CREATE TABLE IF NOT EXISTS {gchat_conversations} (
        id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
        user_low BIGINT NOT NULL,
        user_high BIGINT NOT NULL,
        timecreated BIGINT NOT NULL,
        UNIQUE KEY gchat_pair (user_low, user_high)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin""",
    """CREATE TABLE IF NOT EXISTS {gchat_members} (
        conversation BIGINT NOT NULL,
        userid BIGINT NOT NULL,
        is_open TINYINT NOT NULL DEFAULT 0,
        minimized TINYINT NOT NULL DEFAULT 0,
        unread INT NOT NULL DEFAULT 0,
        last_read BIGINT NOT NULL DEFAULT 0,
        timemodified BIGINT NOT NULL,
        PRIMARY KEY (conversation, userid),
        KEY gchat_user_open (userid, is_open)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin""",
    """CREATE TABLE IF NOT EXISTS {gchat_messages} (
        id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
        conversation BIGINT NOT NULL,
        sender BIGINT NOT NULL,
        text VARCHAR(1333) NOT NULL,
        client_id VARBINARY(256) NULL,
        time BIGINT NOT NULL,
        UNIQUE KEY gchat_sender_client (sender, client_id),
        KEY gchat_conversation_id (conversation, id)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin""",
)

_SQLITE_DDL = (
    """CREATE TABLE IF NOT EXISTS {gchat_conversations} (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        user_low INTEGER NOT NULL,
        user_high INTEGER NOT NULL,
        timecreated INTEGER NOT NULL,
        UNIQUE (user_low, user_high))""",
    """CREATE TABLE IF NOT EXISTS {gchat_members} (
        conversation INTEGER NOT NULL,
        userid INTEGER NOT NULL,
        is_open INTEGER NOT NULL DEFAULT 0,
        minimized INTEGER NOT NULL DEFAULT 0,
        unread INTEGER NOT NULL DEFAULT 0,
        last_read INTEGER NOT NULL DEFAULT 0,
        timemodified INTEGER NOT NULL,
        PRIMARY KEY (conversation, userid))""",
    "CREATE INDEX IF NOT EXISTS {gchat_members_user_open} ON {gchat_members} (userid, is_open)",
    """CREATE TABLE IF NOT EXISTS {gchat_messages} (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        conversation INTEGER NOT NULL,
        sender INTEGER NOT NULL,
        text TEXT NOT NULL,
        client_id BLOB NULL,
        time INTEGER NOT NULL,
        UNIQUE (sender, client_id))""",
    "CREATE INDEX IF NOT EXISTS {gchat_messages_conversation_id} ON {gchat_messages} (conversation, id)",
)

# PostgreSQL, the way Moodle's XMLDB makes its own tables there (BIGSERIAL ids, BIGINT, SMALLINT
# flags, VARCHAR text). Index names live in the schema, not in the table, so they carry the
# prefix (Moodle's do too); they match MySQL's keys one for one.
_POSTGRESQL_DDL = (
    """CREATE TABLE IF NOT EXISTS {gchat_conversations} (
        id BIGSERIAL PRIMARY KEY,
        user_low BIGINT NOT NULL,
        user_high BIGINT NOT NULL,
        timecreated BIGINT NOT NULL)""",
    "CREATE UNIQUE INDEX IF NOT EXISTS {gchat_pair} ON {gchat_conversations} (user_low, user_high)",
    """CREATE TABLE IF NOT EXISTS {gchat_members} (
        conversation BIGINT NOT NULL,
        userid BIGINT NOT NULL,
        is_open SMALLINT NOT NULL DEFAULT 0,
        minimized SMALLINT NOT NULL DEFAULT 0,
        unread INTEGER NOT NULL DEFAULT 0,
        last_read BIGINT NOT NULL DEFAULT 0,
        timemodified BIGINT NOT NULL,
        PRIMARY KEY (conversation, userid))""",
    "CREATE INDEX IF NOT EXISTS {gchat_user_open} ON {gchat_members} (userid, is_open)",
    """CREATE TABLE IF NOT EXISTS {gchat_messages} (
        id BIGSERIAL PRIMARY KEY,
        conversation BIGINT NOT NULL,
        sender BIGINT NOT NULL,
        text VARCHAR(1333) NOT NULL,
        client_id BYTEA NULL,
        time BIGINT NOT NULL)""",
    "CREATE UNIQUE INDEX IF NOT EXISTS {gchat_sender_client} ON {gchat_messages} (sender, client_id)",
    "CREATE INDEX IF NOT EXISTS {gchat_conversation_id} ON {gchat_messages} (conversation, id)",
)

_DDL = {"mysql": _MYSQL_DDL, "postgresql": _POSTGRESQL_DDL, "sqlite": _SQLITE_DDL}
# client_id was VARCHAR(64) utf8mb4_bin before it was kept as bytes (a PAD SPACE collation,
# under which "pad" and "pad " were one id); initdb converts such a column in place.
_MYSQL_CLIENT_ID = "ALTER TABLE {gchat_messages} MODIFY client_id VARBINARY(256) NULL"
_TEXT_TYPES = ("varchar", "char", "text", "character varying", "character")

# Columns added after the first release: (table, column, portable column definition). ``gchat
# initdb`` adds the missing ones (ALTER TABLE ... ADD COLUMN is the same on every engine), and
# start-up and ``gchat check`` name them as missing until it has run.
_ADDED_COLUMNS = (
    ("gchat_members", "last_read_time", "BIGINT NOT NULL DEFAULT 0"),  # read receipts: when last_read moved
)


def create_tables(q: Query) -> None:
    """Create the tables that are missing and bring older ones up to date (``gchat initdb``)."""
    for ddl in _DDL[q.dialect.name]:
        q.execute(ddl)
    if q.dialect.name == "mysql" and outdated(q, ""):
        q.execute(_MYSQL_CLIENT_ID)  # rebuilds the table (and its unique key) with the new column
    upgrade_tables(q)


def outdated(q: Query, prefix: str) -> list[str]:
    """What ``gchat initdb`` would still change in the existing tables, for ``gchat check``."""
    kind = q.column_types("gchat_messages").get("client_id")
    if kind in _TEXT_TYPES:
        return [f"{prefix}gchat_messages.client_id is {kind.upper()}: ids that differ only by "
                "trailing spaces (or by case) count as one, so such a message is lost as a 'retry'"]
    return []


def missing_tables(q: Query) -> list[str]:
    return [name for name in TABLES if not q.table_exists(name)] + missing_columns(q)


def upgrade_tables(q: Query) -> None:
    """Add the columns that later versions need to tables created by an earlier one."""
    for table, column, definition in _ADDED_COLUMNS:
        if q.table_exists(table) and not q.column_exists(table, column):
            q.execute(f"ALTER TABLE {{{table}}} ADD COLUMN {column} {definition}")


def missing_columns(q: Query) -> list[str]:
    return [f"{table}.{column}" for table, column, _ in _ADDED_COLUMNS
            if q.table_exists(table) and not q.column_exists(table, column)]
