"""The small rules behind docs/PROTOCOL.md §9.1: which subscriptions a publisher applies and a relay passes on,
how many one connection may hold, and how refusals are logged (one line per reason and interval, with the
count)."""

from __future__ import annotations

import logging

from hypothesis import given
from hypothesis import strategies as st

from zmqsec.drivers.refusals import RefusalLog
from zmqsec.machines.subscriptions import ShutOut, SubscriptionBook, Verdict
from zmqsec.protocol.frames import relayable, subscription_ok
from zmqsec.protocol.groups import reader_topics
from zmqsec.protocol.primitives import MAX_SUBSCRIPTION

STREAM = b"apel.jobs"


def test_every_subscription_of_a_reader_a_relay_or_a_recorder_is_applied(stream_pki):
    for topic in reader_topics(STREAM, stream_pki["portal"].certificate):
        assert subscription_ok(topic, STREAM) and len(topic) + 1 <= MAX_SUBSCRIPTION
    assert subscription_ok(b"", STREAM) and subscription_ok(STREAM + b"\0", STREAM)  # relays, recorders


@given(st.binary(max_size=300))
def test_anything_else_is_not(prefix):
    canonical = {b"", STREAM + b"\0"} | {STREAM + b"\0" + k for k in (b"D", b"K", b"S", b"R")}
    group = prefix.startswith(STREAM + b"\0G") and prefix.endswith(b".")
    tag = prefix[len(STREAM) + 2:-1]
    expected = prefix in canonical or (group and len(tag) <= 16 and not tag.strip(b"01"))
    assert subscription_ok(prefix, STREAM) == expected


def test_other_streams_and_partial_topics_are_not_applied():
    for prefix in (b"apel", b"apel.jobs", STREAM + b"\0G", STREAM + b"\0G0", STREAM + b"\0G" + b"0" * 17 + b".",
                   STREAM + b"\0X", STREAM + b"\0DD", b"other\0D"):
        assert not subscription_ok(prefix, STREAM), prefix


def test_a_relay_passes_on_zmqsec_subscriptions_of_any_stream_or_of_its_own():
    for prefix in (b"", STREAM + b"\0", STREAM + b"\0D", b"other\0K", b"other\0G01."):
        assert relayable(prefix), prefix
    for prefix in (b"apel", b"\0D", STREAM + b"\0X", STREAM + b"\0G2.", b"x" * 201 + b"\0D", b"\x01" * 300):
        assert not relayable(prefix), prefix
    assert relayable(STREAM + b"\0K", [STREAM]) and relayable(b"", [STREAM])
    assert not relayable(b"other\0K", [STREAM])


def test_a_connection_holds_at_most_the_limit_of_distinct_subscriptions():
    book = SubscriptionBook(lambda prefix: subscription_ok(prefix, STREAM), limit=3)
    book.opened(7)
    verdicts = [book.take(7, b"\x01" + p) for p in (STREAM + b"\0D", b"junk", STREAM + b"\0K")]
    assert verdicts == [Verdict.PASS, Verdict.FOREIGN, Verdict.PASS] and book.held(7) == 3
    assert book.take(7, b"\x01" + STREAM + b"\0D") is Verdict.PASS  # again: nothing more held
    assert book.take(7, b"\x01more") is Verdict.CUT and book.held(7) == 3
    assert book.take(7, b"\x00junk") is Verdict.FOREIGN and book.held(7) == 2  # an unsubscription frees
    assert book.take(7, b"\x01more") is Verdict.FOREIGN and book.held(7) == 3
    assert book.take(8, b"\x01" + STREAM + b"\0S") is Verdict.PASS and book.held(8) == 1  # each connection its own
    book.closed(7)
    book.opened(7)  # the descriptor, reused by a new connection
    assert book.held(7) == 0 and book.take(7, b"\x01more") is Verdict.FOREIGN
    assert book.take(7, b"\x02what") is Verdict.FOREIGN and book.held(7) == 1  # not a subscription: nothing held


def test_messages_without_a_connection_are_judged_but_not_counted():
    book = SubscriptionBook(lambda prefix: subscription_ok(prefix, STREAM), limit=1)
    assert [book.take(None, b"\x01" + bytes([i])) for i in range(3)] == [Verdict.FOREIGN] * 3
    assert book.take(None, b"\x01") is Verdict.PASS


def test_an_address_whose_connection_was_cut_is_shut_out_for_a_period_that_doubles_while_it_goes_on():
    shut = ShutOut(first=1.0, longest=8.0, forgiven=60.0)
    assert not shut.shut("192.0.2.7", 0.0)
    assert shut.cut("192.0.2.7", 0.0) == 1.0
    assert shut.shut("192.0.2.7", 0.5) and not shut.shut("192.0.2.7", 1.0) and not shut.shut("198.51.100.1", 0.5)
    assert [shut.cut("192.0.2.7", t) for t in (1.0, 3.0, 7.0, 15.0, 23.0)] == [2.0, 4.0, 8.0, 8.0, 8.0]
    assert shut.shut("192.0.2.7", 30.9) and not shut.shut("192.0.2.7", 31.0)
    # Forgiven 60 s after the last period ended: the next cut starts afresh, and the table forgets it.
    shut.forget(90.9)
    assert len(shut) == 1
    shut.forget(91.0)
    assert len(shut) == 0
    assert shut.cut("192.0.2.7", 91.0) == 1.0
    assert ShutOut(forgiven=60.0).cut("192.0.2.7", 0.0) == 1.0


def test_refusals_are_logged_once_per_reason_and_interval_with_their_count(caplog):
    now = [0.0]
    refusals = RefusalLog(logging.getLogger("test.refusals"), "stream s", interval=10.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, "test.refusals"):
        for i in range(100_000):
            refusals.refused("bad-msgpack", f"frame {i}")
        refusals.refused("bad-topic", "one")
        now[0] = 9.9
        refusals.flush()
        assert [r.getMessage() for r in caplog.records] == ["stream s: rejected [bad-msgpack] frame 0",
                                                            "stream s: rejected [bad-topic] one"]
        now[0] = 10.0
        refusals.flush()
        refusals.flush()
    assert [r.getMessage() for r in caplog.records][2:] == [
        "stream s: rejected [bad-msgpack] 99999 more time(s) since the last line (the last: frame 99999)"]
