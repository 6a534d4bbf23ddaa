"""Where a reader is in every run it reads (docs/PROTOCOL.md §10.5).  Pure: a driver stores it.

Per stream name: the runs being read, each with the last sequence number
stored and, once a later run's R frame says so, the last one it sent.  A run
read to its end is dropped (the live one is kept); the live run is the one
whose records were stored last among those whose end is not known.  Inputs: ``stored`` (a record is in the
incoming spool), ``linked`` (a run frame), ``seen`` (a run was met live).
Outputs: the repairs to ask for, as ``(stream, run, first, last)`` with
``last`` 0 for "to the end".
"""

from __future__ import annotations

from dataclasses import dataclass, field

MAX_RUNS = 16  # runs tracked per stream name (a chain longer than this is reported, not followed)

Repair = tuple[bytes, bytes, int, int]


@dataclass
class RunPosition:
    """The last sequence number stored of a run, and its last one when known."""

    seq: int = 0
    last: int | None = None

    @property
    def complete(self) -> bool:
        """Everything the run sent is stored."""
        return self.last is not None and self.seq >= self.last


@dataclass
class Positions:
    """Every stream's runs; ``state`` round-trips through :meth:`snapshot` and :meth:`from_snapshot`."""

    streams: dict[bytes, dict[bytes, RunPosition]] = field(default_factory=dict)
    current: dict[bytes, bytes] = field(default_factory=dict)  # stream -> the run stored last

    @classmethod
    def from_snapshot(cls, snapshot: dict) -> "Positions":
        """Positions from what :meth:`snapshot` wrote (JSON: hex names, ints)."""
        out = cls()
        for name_hex, entry in snapshot.get("streams", {}).items():
            name = bytes.fromhex(name_hex)
            out.streams[name] = {bytes.fromhex(run): RunPosition(int(p["seq"]), p.get("last"))
                                 for run, p in entry.get("runs", {}).items()}
            if entry.get("current"):
                out.current[name] = bytes.fromhex(entry["current"])
        return out

    def snapshot(self) -> dict:
        """A JSON-able copy."""
        return {"streams": {name.hex(): {"current": self.current.get(name, b"").hex(),
                                         "runs": {run.hex(): {"seq": p.seq, "last": p.last} for run, p in runs.items()}}
                            for name, runs in self.streams.items()}}

    def resume(self) -> list[tuple[bytes, bytes, int]]:
        """At start: ``(stream, run, last stored)`` of each stream's current run, for the receiver."""
        return [(name, run, self.streams[name][run].seq) for name, run in self.current.items()
                if run in self.streams.get(name, {})]

    def repairs(self) -> list[Repair]:
        """Everything not yet stored of the runs being read (at start, and after a reconnection)."""
        out = []
        for name, runs in self.streams.items():
            for run, pos in runs.items():
                if not pos.complete:
                    out.append((name, run, pos.seq + 1, pos.last or 0))
        return out

    def stored(self, name: bytes, run: bytes, seq: int) -> None:
        """Record ``seq`` of ``run`` is in the incoming spool."""
        runs = self.streams.setdefault(name, {})
        pos = runs.get(run)
        if pos is None:
            pos = runs[run] = RunPosition()
        pos.seq = max(pos.seq, seq)
        if pos.last is None:  # not an earlier run being completed: the one the reader follows
            self.current[name] = run
        self._tidy(name)

    def adopt(self, name: bytes, message_ids) -> None:
        """Records found stored (by their ``empaid``, ``<run hex>-<seq>``) beyond the saved position: a crash came
        between storing them and saving the position, so they count as stored."""
        for message_id in message_ids:
            run_hex, _, seq = message_id.rpartition("-")
            try:
                run, seq = bytes.fromhex(run_hex), int(seq)
            except ValueError:
                continue
            known = self.streams.get(name, {}).get(run)
            if len(run) == 16 and (known is None or seq > known.seq):
                self.stored(name, run, seq)

    def linked(self, name: bytes, run: bytes, previous: bytes, previous_last: int) -> list[Repair]:
        """A run frame: ``run`` follows ``previous``, which sent up to ``previous_last``.  Returns the repairs it
        calls for when this reader reads the stream: the rest of ``previous``, and ``run`` itself from its
        start (what it sent before this reader heard of it; ``last`` 0, to the end)."""
        runs = self.streams.get(name)
        if runs is None or not previous:
            return []  # a reader that never stored this stream starts where it joins
        this = [] if run in runs and runs[run].seq > 0 else [(name, run, 1, 0)]
        if previous in runs:
            pos = runs[previous]
            pos.last = previous_last
            repair = [(name, previous, pos.seq + 1, previous_last)] if pos.seq < previous_last else []
            self._tidy(name)
            return repair + this
        if run in runs and runs[run].seq > 0:
            return []  # we read this run from the start already: its predecessor was complete
        if len(runs) >= MAX_RUNS or previous_last == 0:
            return this
        # A run we never met (the publisher restarted more than once while we were away): all of it.
        runs[previous] = RunPosition(0, previous_last)
        return [(name, previous, 1, previous_last)] + this

    def _tidy(self, name: bytes) -> None:
        runs = self.streams[name]
        for run in [r for r, p in runs.items() if p.complete and r != self.current.get(name)]:
            del runs[run]
