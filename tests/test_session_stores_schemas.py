"""The database session store's rules (tests/test_session_stores.py) on every Moodle schema and
both engines: sessions written by real PHP into ``{sessions}.sessdata`` of the 2.8, 4.4 and 5.2
tables Moodle's install.xml creates, and of the hand-made 2.2 ones on PostgreSQL (MariaDB with
2.2 is where tests/test_session_stores.py runs every store).

The test bodies are the ones of tests/test_session_stores.py, collected here a second time with
this module's ``store`` (the database store only), ``ENGINES`` and ``SCHEMAS``. The file and
Redis stores do not depend on the schema beyond ``{user}`` and ``{config}``, which the rules
here already read on each schema; they stay on MariaDB 2.2 there. The query counts of the
re-check are asserted on every schema by tests/test_moodle_rules.py.
"""

from __future__ import annotations

import pytest

from tests.conftest import ALL_SCHEMAS
from tests.session_stores import DatabaseSessions, php  # noqa: F401
from tests.test_session_stores import (  # noqa: F401 - fixtures and tests collected again here
    db, mfa, moodle, services, settings, test_a_moodle_logout_ends_a_connected_chat,
    test_a_not_logged_in_session_is_refused,
    test_a_session_idle_past_sessiontimeout_is_refused, test_a_sid_nobody_has_is_refused,
    test_a_user_without_a_row_is_refused, test_a_valid_session_is_accepted_until_moodle_logs_it_out,
    test_log_in_as_belongs_to_the_real_user, test_mfa_passed_at_login_and_during_log_in_as,
    test_mfa_refuses_a_password_only_session_until_it_passes, test_mfa_that_is_not_ready_does_not_apply,
    test_the_guest_is_refused, test_the_recheck_reads_many_sessions_at_once,
    test_the_users_row_is_checked_in_the_database)

ENGINES = ("mariadb", "postgresql")
SCHEMAS = ALL_SCHEMAS
COVERED_ELSEWHERE = {("mariadb", "2.2")}  # tests/test_session_stores.py


@pytest.fixture
def store(php, site):
    return DatabaseSessions(php, site)


@pytest.fixture
def any_store(store):
    return store
