"""When the publisher repeats its key announcements (docs/PROTOCOL.md §6.1).

Periodically (a multicast joiner sees no subscription), and when a subscription
arrives that matches an announcement's topic (a new reader gets the key at
once).  Each announcement goes out at most every ``gap`` seconds, so a burst of
subscriptions is coalesced, never an amplifier.
"""

from __future__ import annotations

from .distribution import Group

# Subscriptions trigger at most one re-announcement per this many seconds (bursts are coalesced, not dropped).
SUBSCRIPTION_REANNOUNCE_GAP = 0.05


class Reannouncer:
    """Which announcements are owed, and when each may go out."""

    def __init__(self, announce_topic: bytes, interval: float, group_interval: float,
                 gap: float = SUBSCRIPTION_REANNOUNCE_GAP) -> None:
        self.announce_topic = announce_topic
        self.interval, self.group_interval, self.gap = interval, group_interval, gap
        self.epoch_pending = False
        self.last_epoch_sent = 0.0
        self.groups_pending: set[bytes] = set()
        self.groups_announced = 0.0
        self._group_topics: dict[bytes, bytes] = {}  # group topic -> tag

    def epoch_sent(self, now: float) -> None:
        """The current epoch's announcement just went out."""
        self.last_epoch_sent, self.epoch_pending = now, False

    def groups_changed(self, groups: dict[bytes, Group], now: float) -> None:
        """A new set of groups (after a rekey)."""
        self._group_topics = {g.message[0]: tag for tag, g in groups.items()}
        self.groups_pending &= set(groups)
        self.groups_announced = self.groups_announced or now

    def subscribed(self, topics: list[bytes]) -> None:
        """Subscriptions to ``topics`` arrived: owe the announcements they match."""
        for topic in topics:
            if self.announce_topic.startswith(topic):
                self.epoch_pending = True
            tag = self._group_topics.get(topic)
            if tag is not None:  # a reader's own group: one lookup
                self.groups_pending.add(tag)
            else:  # any other prefix (a relay, a recorder, a reader's unused tag lengths) may match many, or none
                self.groups_pending.update(t for gt, t in self._group_topics.items() if gt.startswith(topic))

    def periodic(self, groups: dict[bytes, Group], now: float) -> None:
        """Owe what is due by the periodic schedule."""
        if now - self.last_epoch_sent >= self.interval:
            self.epoch_pending = True
        if groups and now - self.groups_announced >= self.group_interval:
            self.groups_announced = now
            self.groups_pending.update(groups)

    def due(self, groups: dict[bytes, Group], epoch_announcement: list[bytes], now: float) -> list[list[bytes]]:
        """The owed announcements whose gap has passed: group keys first, then the epoch that needs them."""
        out = []
        for tag in sorted(self.groups_pending):
            group = groups[tag]
            if now - group.last_sent >= self.gap:
                group.last_sent = now
                self.groups_pending.discard(tag)
                out.append(group.message)
        if self.epoch_pending and now - self.last_epoch_sent >= self.gap:
            self.epoch_sent(now)
            out.append(epoch_announcement)
        return out

    def deadlines(self, groups: dict[bytes, Group]) -> list[float]:
        """When :meth:`due` or :meth:`periodic` next has something to do."""
        out = [self.last_epoch_sent + self.interval]
        if self.epoch_pending:
            out.append(self.last_epoch_sent + self.gap)
        if self.groups_pending:
            out.append(min(groups[t].last_sent for t in self.groups_pending) + self.gap)
        if groups:
            out.append(self.groups_announced + self.group_interval)
        return out
