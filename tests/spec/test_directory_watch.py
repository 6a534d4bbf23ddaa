"""A reader's trust directory is watched at the cost of one stat per look (stream issue: housekeeping
stat'ed every file of it ten times a second), and still nothing that changes in it goes unseen."""

from __future__ import annotations

import os
import time

from zmqsec.drivers import watch
from zmqsec.drivers.watch import DirectoryWatch


def _bundle(path, files: int = 500):
    """A directory as big as an IGTF bundle."""
    path.mkdir()
    for i in range(files):
        (path / f"ca-{i:03d}.pem").write_bytes(b"certificate %d\n" % i)
    return path


def _count_listings(monkeypatch) -> list:
    calls = []
    real = os.scandir
    monkeypatch.setattr(watch.os, "scandir", lambda path: calls.append(path) or real(path))
    return calls


def test_looking_costs_one_stat_until_the_full_listing_is_due(tmp_path, monkeypatch):
    trust = DirectoryWatch(_bundle(tmp_path / "certificates"), full_every=10.0)
    listings = _count_listings(monkeypatch)
    assert not any(trust.changed(100.0 + tick / 10) for tick in range(99))  # 9.9 s of looks, ten a second
    assert listings == []  # no entry looked at
    assert not trust.changed(1e9) and len(listings) == 1  # the full listing, when due: unchanged


def test_an_entry_renamed_in_is_seen_at_the_next_look_and_a_rewrite_in_place_at_the_full_listing(tmp_path):
    directory = _bundle(tmp_path / "certificates")
    trust = DirectoryWatch(directory, full_every=10.0)
    (tmp_path / "new.r0").write_bytes(b"crl\n")
    os.rename(tmp_path / "new.r0", directory / "0123abcd.r0")  # as fetch-crl and our tools write
    assert trust.changed(1.0)
    trust.seen(1.0)
    assert not trust.changed(1.1)
    with open(directory / "ca-007.pem", "ab") as f:  # rewritten in place: the directory itself is unchanged
        f.write(b"more\n")
    assert not trust.changed(1.2)
    assert trust.changed(11.0)  # the full listing sees it
    trust.seen(11.0)
    assert not trust.changed(21.0)


def test_a_change_while_the_caller_reloads_is_seen_at_the_next_look(tmp_path):
    directory = _bundle(tmp_path / "certificates", files=3)
    trust = DirectoryWatch(directory)
    (directory / "a.pem").write_bytes(b"a\n")
    assert trust.changed(1.0)
    time.sleep(0.02)  # past the file system's timestamp granularity (within one tick, see the full listing)
    (directory / "b.pem").write_bytes(b"b\n")  # after the look, before the caller took the first change in
    trust.seen(1.0)
    assert trust.changed(1.1)


def test_a_change_told_stays_told_until_it_is_taken_in(tmp_path):
    """The publisher asks whether anything changed, then reloads, which asks again: a rewrite found by the full
    listing must still be a change at the second question."""
    directory = _bundle(tmp_path / "certificates", files=3)
    trust = DirectoryWatch(directory, full_every=10.0)
    trust.seen(0.0)
    with open(directory / "ca-001.pem", "ab") as f:
        f.write(b"more\n")
    assert trust.changed(20.0) and trust.changed(20.1)
    trust.seen(20.1)
    assert not trust.changed(20.2)
