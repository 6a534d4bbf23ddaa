"""What a reader asks its replay servers for, and when (docs/PROTOCOL.md §10.4, §10.5).  No sockets.

Inputs: ``missing`` (a range the receiver needs), ``frame`` (a replayed frame
arrived), ``end`` and ``error`` (a server's answers), ``tick`` (time passes).
Outputs: :class:`Ask` a server for a range, :class:`Grant` it credit,
:class:`Cancel` a request, :class:`Abandon` a range no server holds (an
unrecoverable gap).  Servers are tried in the order the reader lists them;
a server that errs, lacks the range, or stays silent hands over to the next.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from zmqsec.protocol.replay import BUSY, Request

CREDIT = 512  # frames granted when asking
GRANT_EVERY = 256  # frames consumed before granting as many again
SILENCE = 5.0  # seconds without an answer before the next server is asked
RETRY = 1.0  # seconds before asking again a server that had nothing yet (the journal commits every 20 ms)
ATTEMPTS = 5  # answers without progress from one server before the next is tried
GIVE_UP = 120.0  # seconds a range may stay unrepaired, every server silent, before it is abandoned


@dataclass(frozen=True)
class Ask:
    """Send ``request`` to server ``server``."""

    server: int
    request: Request


@dataclass(frozen=True)
class Grant:
    """Grant request ``request_id`` on server ``server`` ``credit`` more frames."""

    server: int
    request_id: int
    credit: int


@dataclass(frozen=True)
class Cancel:
    """Tell server ``server`` to stop serving ``request_id``."""

    server: int
    request_id: int


@dataclass(frozen=True)
class Abandon:
    """No server holds ``first..last`` of ``run``: report it as an unrecoverable gap."""

    stream: bytes
    run: bytes
    first: int
    last: int


Action = Ask | Grant | Cancel | Abandon


@dataclass
class _Want:
    """A range being repaired, and the request that serves it now."""

    stream: bytes
    run: bytes
    first: int  # the first sequence number still needed
    last: int  # the last one needed (0: whatever the server holds of the run)
    server: int = 0
    request_id: int = 0
    asked_at: float = 0.0
    heard_at: float = 0.0
    consumed: int = 0  # frames since the last grant
    idle: int = 0  # answers without progress from this server
    retry_at: float | None = None  # ask again then (the server had nothing yet)
    refusals: int = 0  # servers that said they do not hold it (silence is no answer)
    created: float = 0.0
    hole: int = 0  # open-ended: the end of a hole the receiver found inside it, asked for until a server has it


class Repairer:
    """Ranges wanted per run, at most one request in flight for each."""

    def __init__(self, servers: int, tags: bytes = b"") -> None:
        self.servers, self.tags = servers, tags
        self._wants: dict[int, _Want] = {}  # request id -> want
        self._ids = itertools.count(1)
        self._abandoned: dict[bytes, int] = {}  # run -> the highest sequence number no server holds

    @property
    def active(self) -> int:
        """Ranges being repaired."""
        return len(self._wants)

    def next_id(self) -> int:
        """A request id none of the repairer's requests uses (for a request it does not track: roots)."""
        return next(self._ids)

    def _ask(self, want: _Want, now: float) -> list[Action]:
        self._wants.pop(want.request_id, None)
        want.request_id, want.asked_at, want.heard_at, want.consumed, want.retry_at = next(self._ids), now, now, 0, None
        self._wants[want.request_id] = want
        return [Ask(want.server, Request(want.request_id, want.stream, want.run, want.first, want.last, self.tags,
                                         CREDIT))]

    def _next_server(self, want: _Want, now: float, refused: bool = True) -> list[Action]:
        """Hand the want over to the next server (round the list again after the last).  A server that said it
        does not hold the range counts; when every server has said so, the range is abandoned.  Silence does
        not count (a server may be restarting): the servers are asked again, for up to GIVE_UP seconds."""
        out: list[Action] = [Cancel(want.server, want.request_id)] if want.request_id else []
        self._wants.pop(want.request_id, None)
        want.refusals += refused
        if want.refusals >= self.servers or now - want.created >= GIVE_UP:
            if not want.last:  # open-ended (whatever follows a position): nothing is known to be missing
                return out
            return out + self._abandon(Abandon(want.stream, want.run, want.first, want.last))
        want.server, want.idle = (want.server + 1) % self.servers, 0
        out += self._ask(want, now)
        if want.server == 0 and not refused:  # round the list again: not at once
            out.pop()
            want.retry_at = now + RETRY
        return out

    def missing(self, stream: bytes, run: bytes, first: int, last: int, now: float) -> list[Action]:
        """The receiver needs ``first..last`` (``last`` 0: to the end) of ``run``."""
        if last and last <= self._abandoned.get(run, 0):
            return []  # abandoned already: asking again finds nothing and reports the gap twice
        if not last:  # what follows a position: not what was given up already
            first = max(first, self._abandoned.get(run, 0) + 1)
        if not self.servers:
            return self._abandon(Abandon(stream, run, first, last or first))
        for want in self._wants.values():
            if want.run == run and want.first <= first and (want.last == 0 or last and want.last >= last):
                if want.last == 0 and last:  # a known hole inside an open-ended ask (see end())
                    want.hole = max(want.hole, last)
                return []  # being fetched already
            if want.run == run and want.first <= first <= (want.last or first) + 1 and want.last and last:
                want.last = max(want.last, last)  # the hole grew: the next request asks for it all
                return []
        return self._ask(_Want(stream, run, first, last, created=now), now)

    def _abandon(self, action: Abandon) -> list[Action]:
        """Report a range no server holds, less what was reported already (a gap is reported once)."""
        done = self._abandoned.get(action.run, 0)
        if action.last <= done:
            return []
        self._abandoned[action.run] = action.last
        return [Abandon(action.stream, action.run, max(action.first, done + 1), action.last)]

    def frame(self, server: int, request_id: int, now: float) -> list[Action]:
        """A replayed frame of ``request_id`` arrived; grant more credit as it is consumed."""
        want = self._wants.get(request_id)
        if want is None or want.server != server:
            return []
        want.heard_at, want.consumed = now, want.consumed + 1
        if want.consumed >= GRANT_EVERY:
            want.consumed = 0
            return [Grant(server, request_id, GRANT_EVERY)]
        return []

    def end(self, server: int, request_id: int, served_last: int, available_first: int, available_last: int,
            now: float) -> list[Action]:
        """The server served ``request_id`` up to ``served_last`` and holds ``available_first..available_last``."""
        want = self._wants.get(request_id)
        if want is None or want.server != server:
            return []
        want.heard_at = now
        if not want.last and want.hole >= want.first and available_last < want.first:
            want.last = want.hole  # nothing more here yet, but a hole is known: asked for until a server has it
        out: list[Action] = []
        if available_first > want.first:  # part of the range expired from this server's journal
            gone_last = available_first - 1 if not want.last else min(available_first - 1, want.last)
            self._wants.pop(request_id)
            gone = _Want(want.stream, want.run, want.first, gone_last, want.server, refusals=want.refusals,
                         created=want.created)  # not asked yet: no request id
            out = self._next_server(gone, now)
            if want.last and available_first > want.last:
                return out
            self._wants[request_id] = want
            want.first = available_first
        if served_last >= want.first:  # what the server sent before its end is not asked for again
            want.first, want.idle = served_last + 1, 0
            if want.last and want.first > want.last:
                self._wants.pop(request_id)
                return out  # done
            if not want.last and served_last >= available_last:
                self._wants.pop(request_id)
                return out  # everything this server holds of the run; the receiver asks again if still short
            return out + self._ask(want, now)
        if out:
            return out + self._ask(want, now)
        if not want.last and available_last < want.first:
            self._wants.pop(request_id)
            return []  # an open-ended request, and the run holds nothing more: nothing is missing
        want.idle += 1  # nothing (yet): the live run may not be committed that far
        if want.idle >= ATTEMPTS:
            return self._next_server(want, now)
        want.retry_at = now + RETRY
        return []

    def error(self, server: int, request_id: int, reason: str, now: float) -> list[Action]:
        """The server refused ``request_id``."""
        want = self._wants.get(request_id)
        if want is None or want.server != server:
            return []
        if reason == BUSY:
            want.retry_at, want.heard_at = now + RETRY, now
            return []
        return self._next_server(want, now)

    def tick(self, now: float) -> list[Action]:
        """Time passes: retries that are due, silent servers handed over."""
        out: list[Action] = []
        for want in list(self._wants.values()):
            if want.retry_at is not None and now >= want.retry_at:
                out += self._ask(want, now)
            elif want.retry_at is None and now - want.heard_at >= SILENCE:
                out += self._next_server(want, now, refused=False)
        return out
