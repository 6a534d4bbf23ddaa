"""The publisher's sealed archive of key tree roots (docs/PROTOCOL.md §4.6, §10.3): records open only under their
key, run and generation, and a reader is entitled to exactly the roots of the updates it was in the tree for,
under every order of joins and leaves (against a model)."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zmqsec.protocol.rootarchive import ArchiveError, RootHistory, RootRecord, seal, unseal

KEY, OTHER = bytes(range(32)), bytes(32)
RUN = b"\1" * 16
READERS = [bytes([i]) * 32 for i in range(6)]


def _record(generation: int, joined=(), left=()) -> RootRecord:
    return RootRecord(generation, b"01"[: generation % 3], bytes([generation]) * 32, tuple(joined), tuple(left))


def test_a_record_opens_under_its_key_run_and_generation_only():
    record = _record(7, READERS[:3], READERS[3:4])
    sealed = seal(KEY, RUN, record, os.urandom)
    assert unseal(KEY, RUN, 7, sealed) == record
    assert record.root.hex() not in repr(record)  # no key material in logs
    for key, run, generation, data in [(OTHER, RUN, 7, sealed), (KEY, b"\2" * 16, 7, sealed), (KEY, RUN, 8, sealed),
                                       (KEY, RUN, 7, sealed[:-1] + bytes([sealed[-1] ^ 1])), (KEY, RUN, 7, b"")]:
        with pytest.raises(ArchiveError):
            unseal(key, run, generation, data)


def test_a_reader_is_entitled_to_the_roots_of_the_updates_it_was_in():
    history = RootHistory([_record(1, READERS[:3]), _record(2, (), READERS[1:2]), _record(3, READERS[1:2] + READERS[3:4]),
                           _record(4, (), READERS[0:1])])
    generations = lambda who, first=1: [k.generation for k in history.entitled(who, first)]  # noqa: E731
    assert generations(READERS[0]) == [1, 2, 3]
    assert generations(READERS[1]) == [1, 3, 4]  # left at 2, back at 3
    assert generations(READERS[3]) == [3, 4] and generations(READERS[3], 4) == [4]
    assert generations(READERS[5]) == [] and generations(READERS[0], 4) == []
    assert [k.tag for k in history.entitled(READERS[2], 1)] == [b"0", b"01", b"", b"0"]  # each root's own tag
    assert len(history.entitled(READERS[2], 1, limit=2)) == 2


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sets(st.sampled_from(range(len(READERS)))), min_size=1, max_size=12))
def test_entitlement_matches_a_model_of_the_tree_s_members(member_sets):
    """Each update sets who is in the tree; a reader holds an update's root exactly when it is in after it."""
    records, before = [], set()
    for generation, now_in in enumerate(member_sets, start=1):
        joined = [READERS[i] for i in sorted(now_in - before)]
        left = [READERS[i] for i in sorted(before - now_in)]
        records.append(_record(generation, joined, left))
        before = now_in
    history = RootHistory(reversed(records))  # any order: sorted by generation
    for i, reader in enumerate(READERS):
        for first in range(1, len(member_sets) + 2):
            expected = [g for g, members in enumerate(member_sets, start=1) if g >= first and i in members]
            assert [k.generation for k in history.entitled(reader, first)] == expected
