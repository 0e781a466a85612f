"""The session re-check's shortcut where the sessions are rows of ``{sessions}`` (the database store).

Every ``session_check_interval`` the re-check (gchat/session_watch.py) asks whether every watched
session is still valid. Reading every session row of every watched user for that — 10,000 rows
parsed by the driver in Python every 2 s with 10,000 users online — was most of what an idle
server did. Between two re-checks almost nothing changes, so the database is asked first for a
**digest** of the valid sessions, per bucket of users (``user id mod BUCKETS``): how many there
are and the sum of their row ids. At most ``BUCKETS`` small rows come back; only the buckets whose
digest or users differ from the last full read are read in full again.

Why the digest cannot miss a change: ``{sessions}.id`` is an auto-increment key, never given to a
second row, so a session that ends (its row deleted, or no longer valid: state, timeout, the
user's row) lowers the count, and one that starts raises it — or, when one starts as another
ends, raises the sum, since a new row's id is larger than every id before it. The baseline a
digest is compared with is computed from the rows of the full read itself, judged by the same
rules in Python (gchat/moodle_sessions.py), so no change between the digest query and the read
can be folded into it unseen. When the two sides ever disagree on a rule, the bucket only reads in
full every time: slower, never wrong.
"""

from __future__ import annotations

from collections.abc import Iterable, Set as AbstractSet
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gchat.db import Query

BUCKETS = 64
Session = tuple[int, str]  # (user id, sid hash)
Digest = tuple[int, int]  # (how many valid sessions, the sum of their ids)
NO_SESSIONS: Digest = (0, 0)

# Moodle's rules on a session and its user (gchat.moodle_sessions.SessionRules._judge_record and
# _judge_user), as SQL over ``{sessions} s JOIN {user} u``; parameters: site guest id, the oldest
# valid timemodified.
VALID_SQL = ("s.state = 0 AND s.userid > 0 AND s.userid <> %s AND s.timemodified >= %s "
             "AND u.deleted = 0 AND u.suspended = 0 AND u.confirmed <> 0 AND u.auth <> 'nologin'")


def bucket_of(user_id: int) -> int:
    return user_id % BUCKETS


def read_digests(q: Query, user_list: str, guest: int, oldest: int) -> dict[int, Digest]:
    """Per bucket, the digest of the valid sessions of the users of ``user_list`` (their ids,
    comma-separated: see :meth:`SessionDigests.plan`); a bucket without any is absent."""
    rows = q.all(f"SELECT MOD(s.userid, {BUCKETS}), COUNT(*), SUM(s.id) FROM {{sessions}} s "
                 f"JOIN {{user}} u ON u.id = s.userid WHERE s.userid IN ({user_list}) AND {VALID_SQL} "
                 f"GROUP BY MOD(s.userid, {BUCKETS})", (guest, oldest))
    return {int(bucket): (int(count), int(total)) for bucket, count, total in rows}


@dataclass(frozen=True, slots=True)
class Plan:
    """The watched users, grouped in buckets, and their ids as the digest query writes them."""

    buckets: dict[int, frozenset[int]]
    user_list: str


@dataclass(frozen=True, slots=True)
class Baseline:
    """A bucket at its last full read: its users, the digest and the keys of their valid sessions."""

    users: frozenset[int]
    digest: Digest
    live: frozenset[Session]


class SessionDigests:
    """The baselines of the buckets, and the decision of which buckets to read in full."""

    def __init__(self) -> None:
        self._baselines: dict[int, Baseline] = {}
        self._planned: AbstractSet[Session] = frozenset()
        self._plan = Plan({}, "")

    def plan(self, sessions: AbstractSet[Session]) -> Plan:
        """The buckets of the users of ``sessions``, kept while the sessions are the same (the
        common case between two re-checks: one comparison in C instead of a loop in Python).
        The ids are written into the digest query as integers: the list is as long as the users
        online (a driver's escaping of each costs more, and PostgreSQL allows 65,535 parameters)."""
        if sessions != self._planned:
            grouped: dict[int, set[int]] = {}
            for uid, _ in sessions:
                grouped.setdefault(bucket_of(uid), set()).add(uid)
            buckets = {b: frozenset(users) for b, users in grouped.items()}
            user_list = ", ".join(str(int(uid)) for users in buckets.values() for uid in users)
            self._planned, self._plan = frozenset(sessions), Plan(buckets, user_list)
            self._baselines = {b: base for b, base in self._baselines.items() if b in buckets}
        return self._plan

    def comparable(self, buckets: dict[int, frozenset[int]]) -> dict[int, Baseline]:
        """The baselines of the buckets whose users are those of the baseline: only these can be
        spared a read (none: no digest is worth asking for)."""
        return {b: base for b, users in buckets.items()
                if (base := self._baselines.get(b)) is not None and base.users == users}

    @staticmethod
    def unchanged(comparable: dict[int, Baseline], digests: dict[int, Digest]) -> dict[int, Baseline]:
        """Of ``comparable``, the buckets whose digest is still that of their baseline."""
        return {b: base for b, base in comparable.items() if base.digest == digests.get(b, NO_SESSIONS)}

    def remember(self, buckets: dict[int, frozenset[int]], valid: Iterable[tuple[int, Session]]) -> None:
        """New baselines for ``buckets`` from a full read: ``valid`` holds (row id, key) of every
        valid session of their users (the baselines of buckets no longer watched went in plan())."""
        ids: dict[int, list[int]] = {b: [] for b in buckets}
        keys: dict[int, list[Session]] = {b: [] for b in buckets}
        for row_id, key in valid:
            b = bucket_of(key[0])
            if b in ids:
                ids[b].append(row_id)
                keys[b].append(key)
        for b, users in buckets.items():
            self._baselines[b] = Baseline(users, (len(ids[b]), sum(ids[b])), frozenset(keys[b]))
