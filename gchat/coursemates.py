"""Course-mate sets shared between the users of the same courses.

A user's course-mates are the members of its courses, less itself and the users it blocks or
who block it (and, for ``mates``, less those who accept messages from their contacts only). In
a course of N students, a set per user costs N²: 1,500 students would keep 2.25 million ids,
and loading each set would read the whole course again. So the members of a course are read
once per ``cache_ttl`` (:class:`CourseMembers`), users with the same courses share one union of
them, and each user's set is a thin view over the shared one (:class:`MateSet`) that leaves out
only what is particular to that user.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any

_NOTHING: frozenset[int] = frozenset()


@dataclass(frozen=True, slots=True)
class CourseMembers:
    """The users with an active enrolment in one visible course (and who may use Moodle), and
    which of them accept messages from their contacts only."""

    ids: frozenset[int]
    only_contacts: frozenset[int]


class MateSet(AbstractSet[int]):
    """``base`` less ``me`` and less ``without``, without copying ``base``: a read-only set
    (membership, iteration, size; set operators give plain frozensets)."""

    __slots__ = ("_base", "_me", "_without", "_len")

    def __init__(self, base: frozenset[int], me: int, without: AbstractSet[int] = _NOTHING) -> None:
        self._base = base
        self._me = me
        self._without = frozenset(without & base) if without else _NOTHING
        self._len = len(base) - (me in base) - len(self._without - {me})

    def __contains__(self, item: object) -> bool:
        return item != self._me and item in self._base and item not in self._without

    def __iter__(self) -> Iterator[int]:
        me, without = self._me, self._without
        if without:
            return (uid for uid in self._base if uid != me and uid not in without)
        return (uid for uid in self._base if uid != me)

    def __len__(self) -> int:
        return self._len

    @classmethod
    def _from_iterable(cls, it: Iterable[Any]) -> frozenset[Any]:
        return frozenset(it)

    def __repr__(self) -> str:
        return f"MateSet({sorted(self)!r})"


class Unions:
    """One shared union of members per set of courses (a user in one course gets that course's
    own frozenset). A union is rebuilt when one of its courses was read again."""

    def __init__(self, max_entries: int = 10_000) -> None:
        self._max = max_entries
        self._unions: dict[frozenset[int], tuple[tuple[CourseMembers, ...], frozenset[int]]] = {}

    def of(self, members: dict[int, CourseMembers]) -> frozenset[int]:
        if not members:
            return _NOTHING
        if len(members) == 1:
            return next(iter(members.values())).ids
        key = frozenset(members)
        parts = tuple(members[course] for course in sorted(members))
        hit = self._unions.get(key)
        if hit is not None and all(a is b for a, b in zip(hit[0], parts)):
            return hit[1]
        if len(self._unions) >= self._max:
            self._unions.clear()
        union = frozenset().union(*(part.ids for part in parts))
        self._unions[key] = (parts, union)
        return union
