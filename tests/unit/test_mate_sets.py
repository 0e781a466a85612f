"""Course-mate sets shared between users (gchat/coursemates.py): each user's set is the course's
members less itself and those it must not see, and behaves as a set everywhere it is used."""

from __future__ import annotations

from gchat.coursemates import CourseMembers, MateSet, Unions, name_key


def test_a_mate_set_is_the_base_less_me_and_the_excluded():
    base = frozenset({1, 2, 3, 4, 5})
    mates = MateSet(base, 3, {5, 99})
    assert mates == frozenset({1, 2, 4}) and frozenset({1, 2, 4}) == mates
    assert len(mates) == 3 and sorted(mates) == [1, 2, 4]
    assert 3 not in mates and 5 not in mates and 99 not in mates and 1 in mates
    assert mates & {1, 5, 7} == frozenset({1}) and isinstance(mates | {9}, frozenset)
    assert MateSet(base, 42) == base, "a user outside the base (no course in common) loses nothing"
    assert MateSet(frozenset(), 1) == frozenset() and not MateSet(frozenset({1}), 1)


def test_users_of_the_same_courses_share_one_union():
    unions = Unions()
    a = CourseMembers(frozenset({1, 2, 3}), frozenset())
    b = CourseMembers(frozenset({3, 4}), frozenset({4}))
    assert unions.of({10: a})[0] is a.ids, "one course: its own set, no copy"
    both, _ = unions.of({10: a, 11: b})
    assert both == {1, 2, 3, 4} and unions.of({11: b, 10: a})[0] is both
    reread = CourseMembers(frozenset({3, 4, 5}), frozenset())
    assert unions.of({10: a, 11: reread})[0] == {1, 2, 3, 4, 5}, "a course read again: a new union"
    assert unions.of({}) == (frozenset(), ())


def test_the_first_online_by_name_come_from_the_shared_order():
    ana = CourseMembers(frozenset({1, 2, 3}), frozenset(),
                        (name_key("Ana", 2), name_key("bea", 3), name_key("Carl", 1)))
    other = CourseMembers(frozenset({3, 4}), frozenset(), (name_key("Aaron", 4), name_key("bea", 3)))
    base, order = Unions().of({10: ana, 11: other})
    assert order == (4, 2, 3, 1), "merged by name, each member once"
    mates = MateSet(base, 2, {4}, order)
    assert mates.first({1, 3}, 1) == [3] and mates.first({1, 3}, 5) == [3, 1]
    assert MateSet(base, 2).first({1}, 1) is None, "no order known: the caller sorts"
