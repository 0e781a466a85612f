"""Course-mate sets shared between the users of the same courses.

A user's course-mates are the members of its courses, less itself and the users it blocks or
who block it (and, for ``mates``, less those who accept messages from their contacts only). In
a course of N students, a set per user costs N²: 1,500 students would keep 2.25 million ids,
and loading each set would read the whole course again. So the members of a course are read
once per ``cache_ttl`` (:class:`CourseMembers`), users with the same courses share one union of
them, and each user's set is a thin view over the shared one (:class:`MateSet`) that leaves out
only what is particular to that user.

The members are also kept in name order, so that the first view of a very large course (the
first online course-mates by name, ``ready_online_limit``) costs a walk down that order instead
of sorting the whole course for every user who connects.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any

NOBODY: frozenset[int] = frozenset()  # one shared empty set: frozenset(set()) is a new object each time
NameKey = tuple[str, int]  # how course-mates are ordered: name (case folded), then id


@dataclass(frozen=True, slots=True)
class CourseMembers:
    """The users with an active enrolment in one visible course (and who may use Moodle), in
    name order, and which of them accept messages from their contacts only."""

    ids: frozenset[int]
    only_contacts: frozenset[int]
    by_name: tuple[NameKey, ...] = ()


def name_key(name: str, uid: int) -> NameKey:
    return name.lower(), uid


class MateSet(AbstractSet[int]):
    """``base`` less ``me`` and less ``without``, without copying ``base``: a read-only set
    (membership, iteration, size; set operators give plain frozensets), with the shared name
    order of ``base`` (:meth:`first`)."""

    __slots__ = ("_base", "_me", "_without", "_len", "_order")

    def __init__(self, base: frozenset[int], me: int, without: AbstractSet[int] = NOBODY,
                 order: Sequence[int] = ()) -> None:
        self._base = base
        self._me = me
        self._without = frozenset(without & base) if without else NOBODY
        self._len = len(base) - (me in base) - len(self._without - {me})
        self._order = order

    def __contains__(self, item: object) -> bool:
        return item != self._me and item in self._base and item not in self._without

    @property
    def whole(self) -> frozenset[int] | None:
        """The shared set this one is (with its user), when it leaves out nobody else."""
        return None if self._without else self._base

    def __iter__(self) -> Iterator[int]:
        me, without = self._me, self._without
        if without:
            return (uid for uid in self._base if uid != me and uid not in without)
        return (uid for uid in self._base if uid != me)

    def __len__(self) -> int:
        return self._len

    def __and__(self, other: Any) -> frozenset[int]:
        """The members also in ``other``: at C speed when ``other`` is a set (who is online)."""
        if isinstance(other, (set, frozenset)):
            both = self._base & other
            if self._me in both or (self._without and not both.isdisjoint(self._without)):
                both = both - self._without - {self._me}
            return frozenset(both)
        return frozenset(uid for uid in other if uid in self)

    __rand__ = __and__

    def first(self, among: AbstractSet[int], limit: int) -> list[int] | None:
        """The first ``limit`` of ``among`` (a subset of this set) in name order; None when this
        set knows no order."""
        if len(self._order) != len(self._base):
            return None
        found = []
        for uid in self._order:
            if uid in among:
                found.append(uid)
                if len(found) == limit:
                    break
        return found

    @classmethod
    def _from_iterable(cls, it: Iterable[Any]) -> frozenset[Any]:
        return frozenset(it)

    def __repr__(self) -> str:
        return f"MateSet({sorted(self)!r})"


class Unions:
    """One shared union of members per set of courses (a user in one course gets that course's
    own frozenset), with its name order. A union is rebuilt when one of its courses was read
    again."""

    def __init__(self, max_entries: int = 10_000) -> None:
        self._max = max_entries
        self._unions: dict[frozenset[int], tuple[tuple[CourseMembers, ...], frozenset[int], tuple[int, ...]]] = {}

    def of(self, members: dict[int, CourseMembers]) -> tuple[frozenset[int], tuple[int, ...]]:
        """The members of all these courses, and their ids in name order."""
        if not members:
            return NOBODY, ()
        key = frozenset(members)
        parts = tuple(members[course] for course in sorted(members))
        hit = self._unions.get(key)
        if hit is not None and all(a is b for a, b in zip(hit[0], parts, strict=True)):
            return hit[1], hit[2]
        if len(self._unions) >= self._max:
            self._unions.clear()
        if len(parts) == 1:
            union = parts[0].ids
            order = tuple(uid for _, uid in parts[0].by_name)
        else:
            union = frozenset().union(*(part.ids for part in parts))
            order = tuple(dict.fromkeys(uid for _, uid in heapq.merge(*(part.by_name for part in parts))))
        self._unions[key] = (parts, union, order)
        return union, order
