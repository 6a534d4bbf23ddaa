"""A reader link's handover from an old socket to a narrower new one (docs/PROTOCOL.md §9.1): whatever the order in
which the two sockets are read, the frames come out once each, in the order they were sent."""

from collections import deque

from hypothesis import given, settings
from hypothesis import strategies as st

from zmqsec.drivers.links import Handover

REANNOUNCEMENT = [b"s\x00K", b"the current key"]  # the same bytes every time


def _data(n: int) -> list[bytes]:
    return [b"s\x00D", n.to_bytes(4, "big") + bytes(60)]


def _numbers(frames) -> list[int]:
    return [int.from_bytes(parts[1][:4], "big") for parts in frames if parts[0] == b"s\x00D"]


@st.composite
def _handovers(draw):
    """A stream of numbered data frames with re-announcements among them; the point where the new socket's
    subscription took effect; the order of reads; when the link closes the old socket once it may."""
    count = draw(st.integers(1, 80))
    sent = []
    for n in range(count):
        sent.append(_data(n))
        if draw(st.integers(0, 4)) == 0:
            sent.append(REANNOUNCEMENT)
    start = draw(st.integers(0, len(sent)))
    return sent, start, draw(st.lists(st.booleans(), min_size=len(sent) * 3, max_size=len(sent) * 3))


def _run(sent, start, choices, hold_bytes: int) -> list[list[bytes]]:
    """Read the old socket (all that was sent) and the new one (from ``start``, not while the hold is full) in the
    order ``choices`` says; close the old one as soon as the handover allows, or once it is empty (an old socket
    read and found empty has caught up)."""
    old, new, choices = deque(sent), deque(sent[start:]), iter(choices)
    handover, out = Handover(hold_bytes), []
    while new or (old and not handover.closed):
        from_old = old and not handover.closed
        from_new = new and not handover.full
        if from_old and (next(choices, True) or not from_new):
            out += handover.from_old(old.popleft())
        elif from_new:
            out += handover.from_new(new.popleft())
        if not handover.closed and (handover.old_caught_up and next(choices, True) or not old):
            out += handover.close()
    return out + ([] if handover.closed else handover.close())


@settings(max_examples=400, deadline=None)
@given(_handovers(), st.sampled_from([1 << 30, 0, 67, 200, 1000]))
def test_every_frame_comes_out_once_in_the_order_sent(case, hold_bytes):
    """However the reads interleave, and however little the handover may hold (0: the new socket is read only
    once the old one closed)."""
    sent, start, choices = case
    assert _numbers(_run(sent, start, choices, hold_bytes)) == _numbers(sent)


def test_the_new_sockets_frames_wait_for_the_old_one():
    """The old socket lags 10 frames behind the new one: nothing the new one brings is handed on before the old
    one brought what came before it."""
    sent = [_data(n) for n in range(20)]
    handover = Handover(1 << 20)
    assert [handover.from_new(parts) for parts in sent[10:]] == [[]] * 10
    assert handover.held_bytes == 10 * 67 and not handover.old_caught_up and not handover.full
    assert _numbers(sum((handover.from_old(parts) for parts in sent[:10]), [])) == list(range(10))
    assert _numbers(handover.from_old(sent[10])) == [10] and handover.old_caught_up
    assert _numbers(handover.close()) == list(range(11, 20)) and handover.held_bytes == 0
    # after the close, a frame the old socket brought is still taken once; a new one is handed on at once
    assert handover.from_new(sent[5]) == [] and _numbers(handover.from_new(_data(20))) == [20]


def test_a_full_hold_stops_the_new_socket_until_the_old_one_brings_what_it_holds():
    sent = [_data(n) for n in range(6)]
    handover = Handover(2 * 67)
    assert handover.from_new(sent[3]) == [] and not handover.full
    assert handover.from_new(sent[4]) == [] and handover.full  # the link reads the old socket only
    assert _numbers(sum((handover.from_old(parts) for parts in sent[:4]), [])) == [0, 1, 2, 3]
    assert not handover.full and handover.old_caught_up
