"""Recovery maths: pure functions."""

from __future__ import annotations

from server.model import Publication, StreamPosition, has_gap, is_recovered, merge_publications


def pubs(*offsets: int) -> list[Publication]:
    return [Publication(data=b"1", offset=o) for o in offsets]


def test_recovered_when_history_holds_exactly_the_missed_offsets() -> None:
    assert is_recovered(StreamPosition(3, "e"), StreamPosition(6, "e"), pubs(4, 5, 6), 300)


def test_recovered_when_nothing_was_missed() -> None:
    assert is_recovered(StreamPosition(6, "e"), StreamPosition(6, "e"), [], 300)


def test_empty_epoch_means_any_epoch() -> None:
    assert is_recovered(StreamPosition(1, ""), StreamPosition(2, "e"), pubs(2), 300)


def test_not_recovered_on_epoch_change_or_sentinel() -> None:
    assert not is_recovered(StreamPosition(1, "old"), StreamPosition(2, "e"), pubs(2), 300)
    assert not is_recovered(StreamPosition(0, "_"), StreamPosition(0, "e"), [], 300)


def test_not_recovered_when_history_was_trimmed() -> None:
    assert not is_recovered(StreamPosition(1, "e"), StreamPosition(5, "e"), pubs(3, 4, 5), 300)


def test_not_recovered_over_the_limit() -> None:
    assert not is_recovered(StreamPosition(0, "e"), StreamPosition(4, "e"), pubs(1, 2, 3, 4), 3)


def test_not_recovered_when_client_is_ahead() -> None:
    assert not is_recovered(StreamPosition(9, "e"), StreamPosition(4, "e"), [], 300)


def test_merge_deduplicates_and_sorts() -> None:
    merged = merge_publications(pubs(2, 3, 4), pubs(4, 5, 3))
    assert [p.offset for p in merged] == [2, 3, 4, 5]


def test_merge_keeps_unpositioned_after_positioned() -> None:
    merged = merge_publications(pubs(1), [Publication(data=b"2"), *pubs(2)])
    assert [p.offset for p in merged] == [1, 2, 0]


def test_gap_detection() -> None:
    assert not has_gap(pubs(4, 5), 3)
    assert has_gap(pubs(5), 3)
    assert not has_gap([], 3)
