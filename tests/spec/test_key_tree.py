"""Key tree mode (docs/PROTOCOL.md §4.6), driven alone with pinned time: what each reader receives through its own
topics, revocation, catch-up, and the tree's updates under every order of joins and leaves against a model."""

from __future__ import annotations

import pytest

from kit.pki import Pki
from kit.wire import WireSender, feed, of_kind, publish, reaching, reader_set, size
from zmqsec.crypto import enveloped
from zmqsec.keys.ca import Role
from zmqsec.machines.receiver import CatchUp, Delivered, Gap, Rejected, StreamReceiver
from zmqsec.machines.sender import RotationPolicy
from zmqsec.protocol import frames
from zmqsec.protocol.groups import leaf_topic

READERS = 40
STREAM = "apel.jobs"


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    """A publisher and READERS reader certificates over three shared key pairs (each its own leaf)."""
    pki = Pki.create(tmp_path_factory.mktemp("tree"), "/O=zmqsec test/CN=Tree CA", publisher=Role.PUBLISHER)
    pki.issue_shared("reader", READERS, digits=3)
    return pki


@pytest.fixture(scope="module")
def readers(pki) -> list:
    """The readers' credentials, in order."""
    return [pki[f"reader{i:03d}"] for i in range(READERS)]



def _reaching(credential, messages):
    return reaching(STREAM, credential, messages)


def _sender(pki, readers) -> WireSender:
    return WireSender(STREAM, pki["publisher"], reader_set(readers), RotationPolicy(mode="tree", checkpoint_max=16))









def _paths(sender, credentials, now):
    """Every reader subscribes to its leaf topic: the path envelopes the publisher answers with."""
    return sender.subscription_seen(now, [leaf_topic(STREAM, c.certificate) for c in credentials])


def _delivered(events):
    return [e.payload for e in events if isinstance(e, Delivered)]


def test_every_reader_reads_through_its_path_envelope_and_the_root_wrap(pki, readers):
    sender = _sender(pki, readers)
    start = sender.start(0.0)
    assert of_kind(start, b"T") == []  # a fresh tree: no update to send, every reader asks for its path
    [announcement] = of_kind(start, b"K")
    wrapped = enveloped.recipients(frames.decode(announcement).envelope)
    assert wrapped.key_transport == 0 and [k[:1] for k in wrapped.kek_ids] == [b"t"]  # one wrap: the root
    paths = _paths(sender, readers, 0.1)
    assert len(of_kind(paths, b"T")) == READERS
    wire = start + paths + publish(sender, 10, 0.2)
    for reader in readers:
        reaching = _reaching(reader, wire)
        assert len(of_kind(reaching, b"T")) == 1  # its own path, nobody else's
        events = feed(StreamReceiver(reader, pki.trust), reaching)
        assert _delivered(events) == [b"record %d" % i for i in range(10)]
        assert not [e for e in events if isinstance(e, (Rejected, Gap))], reader.certificate.subject


def test_revoking_a_reader_costs_the_others_one_small_update_and_it_reads_nothing_after(pki, readers):
    sender = _sender(pki, readers)
    before = sender.start(0.0) + _paths(sender, readers, 0.0) + publish(sender, 10, 0.1)
    victim, others = readers[5], readers[:5] + readers[6:]
    rekey = sender.readers_changed(reader_set(others), 1.0)
    updates = of_kind(rekey, b"T")
    assert 1 <= len(updates) <= 8  # about log2(40) wraps, one per sibling of the victim's path
    after = publish(sender, 10, 1.1, start=10)
    most = max(size(_reaching(r, rekey)) for r in others)
    assert most <= 4096  # the update a remaining reader needs and the epoch announcement, in all
    for reader in others:
        assert len(of_kind(_reaching(reader, rekey), b"T")) == 1
        receiver = StreamReceiver(reader, pki.trust)
        events = feed(receiver, _reaching(reader, before + rekey + after), 1.2) + receiver.tick(10.0)
        assert _delivered(events) == [b"record %d" % i for i in range(20)]
        assert not [e for e in events if isinstance(e, (Rejected, Gap, CatchUp))]
    receiver = StreamReceiver(victim, pki.trust)
    events = feed(receiver, _reaching(victim, before + rekey + after), 1.2) + receiver.tick(10.0)
    assert of_kind(_reaching(victim, rekey), b"T") == []  # every wrap goes to a sibling of its old path
    assert _delivered(events) == [b"record %d" % i for i in range(10)]
    reasons = [e.name for e in events if isinstance(e, Rejected)]
    assert reasons.count("not-a-recipient") == 1 and reasons.count("no-key") == 10


def test_two_revocations_in_one_update_and_a_join(pki, readers):
    members = readers[:30]
    sender = _sender(pki, members)
    before = sender.start(0.0) + _paths(sender, members, 0.0) + publish(sender, 5, 0.1)
    gone, joiner = [readers[3], readers[17]], readers[35]
    now_in = [r for r in members if r not in gone] + [joiner]
    rekey = sender.readers_changed(reader_set(now_in), 1.0) + _paths(sender, [joiner], 1.0)
    after = publish(sender, 5, 1.1, start=5)
    for reader in now_in:
        receiver = StreamReceiver(reader, pki.trust)
        events = feed(receiver, _reaching(reader, before + rekey + after), 1.2) + receiver.tick(10.0)
        expected = range(5, 10) if reader is joiner else range(10)
        assert _delivered(events) == [b"record %d" % i for i in expected], reader.certificate.subject
    for reader in gone:
        receiver = StreamReceiver(reader, pki.trust)
        events = feed(receiver, _reaching(reader, before + rekey + after), 1.2) + receiver.tick(10.0)
        assert _delivered(events) == [b"record %d" % i for i in range(5)]


def test_a_reader_that_missed_an_update_asks_for_its_path_and_catches_up(pki, readers):
    sender = _sender(pki, readers)
    reader = readers[0]
    receiver = StreamReceiver(reader, pki.trust)
    events = feed(receiver, _reaching(reader, sender.start(0.0) + _paths(sender, readers, 0.0)
                                       + publish(sender, 3, 0.1)))
    rekey = sender.readers_changed(reader_set(readers[:1] + readers[2:]), 1.0)  # reader 1 is out; our update is lost
    lost = of_kind(_reaching(reader, rekey), b"T")
    assert len(lost) == 1
    events += feed(receiver, [m for m in _reaching(reader, rekey) if m not in lost], 1.0)
    events += feed(receiver, _reaching(reader, publish(sender, 3, 1.1, start=3)), 1.1)
    asked = receiver.tick(1.5)
    # The epoch announcement waits for the root of update 2: the driver asks for it too (a roots request, §10.4)
    assert [e for e in asked if isinstance(e, CatchUp)] == [CatchUp(b"apel.jobs", sender.stream_id, 2)]
    # The driver subscribes to its leaf topic anew: the publisher answers with the reader's path.
    answer = _paths(sender, [reader], 1.6)
    events += asked + feed(receiver, _reaching(reader, answer), 1.6) + receiver.tick(1.7)
    assert _delivered(events) == [b"record %d" % i for i in range(6)]
    assert not [e for e in events if isinstance(e, Gap)]


# -- the tree alone, against a model ---------------------------------------------------------------------------

from itertools import combinations  # noqa: E402

from hypothesis import settings, strategies as st  # noqa: E402
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule  # noqa: E402

from zmqsec.protocol.primitives import tree_derive  # noqa: E402
from zmqsec.protocol.tree import KeyTree, NodeKey  # noqa: E402


def _counter_rng():
    count = iter(range(1, 1 << 30))
    return lambda n: next(count).to_bytes(n, "big")


def _model_nodes(bits: dict[str, bytes]) -> dict[bytes, frozenset[str]]:
    """The compressed trie of ``bits`` by definition: an interior node wherever two readers part (or where readers
    have equal bits), holding every reader under its tag."""
    tags = {a[:next((i for i in range(len(a)) if a[i] != b[i]), len(a))] for a, b in combinations(bits.values(), 2)}
    return {t: frozenset(fp for fp, b in bits.items() if b.startswith(t)) for t in tags}


def _tree_nodes(tree: KeyTree) -> dict[bytes, frozenset[str]]:
    def under(node):
        return [node] if isinstance(node, str) else [fp for kid in tree.children[node] for fp in under(kid)]
    return {t: frozenset(under(t)) for t in tree.children}


def _learn(known: dict[bytes, NodeKey], wraps, name: bytes, stream_id: bytes) -> None:
    """Everything ``known`` (kek id -> key) opens among ``wraps``, to a fixed point."""
    changed = True
    while changed:
        changed = False
        for wrap in wraps:
            if wrap.under.kek_id in known and wrap.carried.kek_id not in known:
                node = known[wrap.carried.kek_id] = wrap.carried
                for tag, generation in wrap.derived:
                    node = NodeKey(tag, generation, tree_derive(node.key, name, stream_id, tag, generation))
                    known[node.kek_id] = node
                changed = True


class TreeMachine(RuleBasedStateMachine):
    """Joins and leaves in any order and any number per update.  Bits come from a tiny space (two random leading
    bits, then one of three 30-bit patterns, then a serial number) so that readers share long prefixes, some
    their whole leaf topic."""

    def __init__(self) -> None:
        super().__init__()
        self.tree = KeyTree(b"s", bytes(16), _counter_rng())
        self.members: dict[str, bytes] = {}
        self.known: dict[str, dict[bytes, NodeKey]] = {}  # each member's keys, as a reader would hold them
        self.departed: dict[bytes, NodeKey] = {}  # what every reader that left knew, pooled (colluding)
        self.wraps: list = []  # every update message so far
        self.serial = 0
        self.root: NodeKey | None = None

    @rule(joins=st.lists(st.sampled_from([b"00", b"01", b"10", b"11"]).flatmap(
              lambda head: st.sampled_from([head + b"0" * 30, head + b"1" * 30, head + b"01" * 15])), max_size=4),
          leaves=st.integers(0, 3))
    def update(self, joins, leaves):
        """Up to ``leaves`` readers leave and ``joins`` join (their bits: a shared 32-bit head, then distinct)."""
        for fp in sorted(self.members)[:leaves]:
            if len(self.members) > 1 or joins:
                self.departed.update(self.known.pop(fp))
                del self.members[fp]
        for bits in joins:
            self.serial += 1
            self.members[f"r{self.serial}"] = bits + format(self.serial, "0224b").encode()
        if not self.members:
            return
        update = self.tree.update(dict(self.members))
        if update is None:
            return
        self.wraps += update.wraps
        self.root = update.root
        for fp in self.members:
            known = self.known.setdefault(fp, {})
            if not known:  # a joiner: its path envelope
                known.update((k.kek_id, k) for k in self.tree.path(fp))
            _learn(known, update.wraps, b"s", bytes(16))
        _learn(self.departed, self.wraps, b"s", bytes(16))

    @invariant()
    def layout_is_the_model_trie(self):
        if len(self.tree.bits) > 1:
            assert _tree_nodes(self.tree) == _model_nodes(self.tree.bits)

    @invariant()
    def every_member_holds_its_whole_path_and_the_root(self):
        for fp, known in self.known.items():
            for key in self.tree.path(fp):
                assert known.get(key.kek_id) == key, (fp, key)
            assert self.root.kek_id in known

    @precondition(lambda self: self.root is not None)
    @invariant()
    def the_readers_that_left_learn_no_current_key(self):
        current = {k.kek_id for fp in self.members for k in self.tree.path(fp)[:1 + len(list(self.tree.ancestors(fp)))]}
        assert not current & set(self.departed), "a departed reader derives a current key"


TreeMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=12, deadline=None)
test_tree_updates_against_the_model = TreeMachine.TestCase


# -- decoders: garbage gets a specific error ------------------------------------------------------------------

import msgpack  # noqa: E402
from hypothesis import given  # noqa: E402

from zmqsec.protocol.primitives import KeyRecordError, decode_tree_record, encode_tree_record  # noqa: E402

_entry = st.lists(st.one_of(st.binary(max_size=40), st.integers(-3, 2**33), st.text(max_size=3), st.none()),
                  max_size=4)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=400),
                 st.lists(st.one_of(st.integers(-3, 2**33), st.binary(max_size=40), st.lists(_entry, max_size=4)),
                          max_size=9).map(msgpack.packb)))
def test_the_tree_record_decoder_raises_only_key_record_errors(data):
    with pytest.raises(KeyRecordError):
        decode_tree_record(data)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 600), st.integers(0, 255))
def test_a_flipped_byte_in_a_tree_record_never_confirms(position, value):
    record = bytearray(encode_tree_record(b"apel.jobs", bytes(16), b"01", 3, [(b"011", 3, bytes(range(32)))],
                                          [(b"01", 3), (b"", 3)]))
    position %= len(record)
    if record[position] == value:
        return
    record[position] = value
    try:
        decode_tree_record(bytes(record))
    except KeyRecordError:
        return
    raise AssertionError("an altered tree key record was confirmed")


def test_a_stranger_flooding_tree_topics_costs_no_cryptography(pki, readers):
    """T frames on our path's topics with envelopes naming keys we do not hold are refused before any signature
    check, and ask for our path at most once a second."""
    reader = readers[2]
    sender = _sender(pki, readers)
    receiver = StreamReceiver(reader, pki.trust)
    wire = sender.start(0.0) + _paths(sender, [reader], 0.0)
    feed(receiver, _reaching(reader, wire))
    update = frames.decode(of_kind(sender.readers_changed(reader_set(readers[:2] + readers[3:]), 1.0), b"T")[0])
    leaf = leaf_topic(STREAM, reader.certificate)
    forged = frames.encode(frames.TreeAnnouncement(leaf, sender.stream_id, 9, update.envelope, b"\x30\x00"))
    events, asks = [], []
    for start, ticks in ((1.0, (1.3,)), (1.5, (1.8, 2.35))):
        for i in range(500):
            events += receiver.frame_received(forged, start)
        asks += [len([e for e in receiver.tick(t) if isinstance(e, CatchUp)]) for t in ticks]
    assert {e.name for e in events} == {"no-tree-key"} and len(events) == 1000
    assert asks == [1, 0, 1]  # one ask per flood, and none again within a second of the last


# -- configuration ----------------------------------------------------------------------------------------------

import argparse  # noqa: E402

from zmqsec.cli import config  # noqa: E402
from zmqsec.cli.publish import PUBLISH, rotation_policy  # noqa: E402
from zmqsec.errors import ZmqsecError  # noqa: E402


def _policy(tmp_path, rotation: str, *flags: str):
    path = tmp_path / "publisher.ini"
    path.write_text("[stream]\nname = apel.jobs\n[publisher]\nendpoint = tcp://127.0.0.1:1\n[certificates]\n"
                    "certificate = /c\nkey = /k\ncapath = /ca\n[readers]\nregistry = /r\n"
                    f"[rotation]\n{rotation}\n")
    parser = argparse.ArgumentParser()
    config.add_flags(parser, PUBLISH)
    return rotation_policy(config.load(PUBLISH, parser.parse_args(["--config", str(path), *flags])))


def test_the_mode_is_a_config_key_and_a_flag(tmp_path):
    assert _policy(tmp_path, "mode = tree").mode == "tree"
    assert _policy(tmp_path, "group_size = 8").mode == "" and _policy(tmp_path, "group_size = 8").group_size == 8
    assert _policy(tmp_path, "", "--rotation-mode", "tree").mode == "tree"
    with pytest.raises(ZmqsecError, match=r"\[rotation\] mode tree takes no group_size"):
        _policy(tmp_path, "mode = tree\ngroup_size = 8")
    with pytest.raises(ZmqsecError, match="mode"):
        _policy(tmp_path, "mode = lkh")


def test_path_envelopes_are_made_once_per_update_and_sent_at_most_once_per_leaf_per_gap(pki, readers):
    sender = _sender(pki, readers)
    sender.start(0.0)
    leaf = leaf_topic(STREAM, readers[0].certificate)
    [first] = of_kind(_paths(sender, readers[:1], 1.0), b"T")
    assert of_kind(sender.subscription_seen(1.01, [leaf, leaf]), b"T") == []  # within 50 ms of the last: owed
    [again] = of_kind(sender.tick(1.06), b"T")  # ... then sent by the next turn, the envelope made once
    assert again is first
    stranger = frames.tree_topic(STREAM, b"01" * 16)
    assert of_kind(sender.subscription_seen(2.0, [stranger]) + sender.tick(3.0), b"T") == []  # no such reader
    every = of_kind(sender.subscription_seen(4.0, [leaf_topic(STREAM, c.certificate) for c in readers]), b"T")
    assert len(every) == READERS  # 40 readers: under the 64 of a turn
    sender.readers_changed(reader_set(readers[1:]), 5.0)
    [renewed] = of_kind(sender.subscription_seen(5.1, [leaf_topic(STREAM, readers[1].certificate)]), b"T")
    assert renewed not in every  # an update makes the paths anew


def test_path_envelopes_per_turn_are_bounded(pki, readers, monkeypatch):
    from zmqsec.machines import keytree

    monkeypatch.setattr(keytree, "PATHS_PER_TURN", 16)
    sender = _sender(pki, readers)
    sender.start(0.0)
    turns = [of_kind(sender.subscription_seen(1.0, [leaf_topic(STREAM, c.certificate) for c in readers]), b"T")]
    turns += [of_kind(sender.tick(1.0 + i / 100), b"T") for i in range(1, 4)]
    assert [len(t) for t in turns] == [16, 16, 8, 0]  # the rest waits for later turns; none is dropped


def test_inspect_shows_tree_frames(pki, readers, tmp_path, run_cli):
    sender = _sender(pki, readers)
    wire = sender.start(0.0) + _paths(sender, readers[:1], 0.0) + sender.readers_changed(reader_set(readers[1:]), 1.0)
    capture = tmp_path / "frames.zcap"
    capture.write_bytes(b"".join(msgpack.packb([1.0, m], use_bin_type=True) for m in wire))
    code, out, _ = run_cli("inspect", capture)
    lines = [line for line in out.splitlines() if " T apel.jobs " in line]
    assert code == 0 and len(lines) == len(of_kind(wire, b"T")) >= 2
    assert "recipients 1" in lines[0] and "key ids t" in lines[1] and "signature good" in lines[1]


def test_a_reader_keeps_at_most_256_tree_keys_and_never_drops_the_ones_in_use():
    from zmqsec.machines.events import ReceiverPolicy
    from zmqsec.machines.keyring import Keyring
    from zmqsec.protocol.announce import TreeKeys

    keyring, bits = Keyring(ReceiverPolicy()), b"0" * 256
    leaf = NodeKey(bits, 1, bytes(32))  # our leaf: made when we joined, never superseded
    keyring.add_tree_keys(TreeKeys(bits, 1, (leaf,), ()), bits, b"s", bytes(16), "signer")
    for generation in range(2, 302):  # 300 updates of the nodes above us
        keys = (NodeKey(b"0", generation, bytes([generation % 256]) * 32), NodeKey(b"", generation, bytes(32)))
        keyring.add_tree_keys(TreeKeys(b"0", generation, keys, ()), bits, b"s", bytes(16), "signer")
    held = keyring.tree_key_ids()
    assert len(held) == 256 and leaf.kek_id in held  # superseded keys went first, the lowest generations first
    assert {b"t0.301", b"t.301"} <= held and b"t0.2" not in held


def test_path_envelopes_kept_are_bounded(pki, readers, monkeypatch):
    from zmqsec.machines import keytree

    monkeypatch.setattr(keytree, "PATHS_KEPT", 8)
    sender = _sender(pki, readers)
    sender.start(0.0)
    first = of_kind(sender.subscription_seen(1.0, [leaf_topic(STREAM, c.certificate) for c in readers]), b"T")
    assert len(sender.actions._distribution._made) == 8  # the newest 8 kept
    again = of_kind(sender.subscription_seen(2.0, [leaf_topic(STREAM, readers[-1].certificate),
                                                    leaf_topic(STREAM, readers[0].certificate)]), b"T")
    assert again[0] is first[-1] and again[1] is not first[0]  # kept, and made anew


def test_tree_keys_unwrap_only_for_the_publisher_certificate_that_sent_them():
    from zmqsec.machines.events import ReceiverPolicy
    from zmqsec.machines.keyring import Keyring
    from zmqsec.protocol.announce import TreeKeys

    keyring, bits = Keyring(ReceiverPolicy()), b"1" * 256
    root = NodeKey(b"", 3, bytes(range(32)))
    keyring.add_tree_keys(TreeKeys(b"", 3, (root,), ()), bits, b"s", bytes(16), "publisher A")
    assert keyring.group_keys_from("publisher A") == {root.kek_id: root.key}
    assert keyring.group_keys_from("publisher B") == {}  # another allowed publisher cannot use them
