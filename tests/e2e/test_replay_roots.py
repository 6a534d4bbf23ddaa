"""Roots requests (docs/PROTOCOL.md §4.6, §10.4): a real ReplayServer on loopback over the journal of a key tree
run, with the publisher's RootServer.  A reader of the registry gets the roots of the updates it was in the tree
for, in a path envelope that it, and openssl, can open; a revoked reader, a stranger, an unknown run and a server
that keeps no keys get errors; new answers are rate-limited while repeated questions cost nothing."""

from __future__ import annotations

import shutil

import pytest
import zmq

from kit.opensslpeer import run as openssl
from kit.replay_client import Client
from kit.wire import WireSender
from zmqsec.crypto.enveloped import KeyTransport
from zmqsec.drivers import roots as roots_module
from zmqsec.drivers.journal import Journal, JournalReader
from zmqsec.drivers.recorder import Recorder
from zmqsec.drivers.replay import ReplayServer
from zmqsec.drivers.roots import KEY_FILE, RootArchive, RootServer, archive_key, load_archive_key
from zmqsec.keys.errors import InsecureKeyFile, KeyFileError
from zmqsec.keys.registry import Reader, ReaderSet, fingerprint
from zmqsec.machines.sender import Archive, RotationPolicy, Send
from zmqsec.protocol import frames
from zmqsec.protocol import replay as codec
from zmqsec.protocol.announce import open_tree_announcement
from zmqsec.protocol.primitives import decode_tree_record
from zmqsec.protocol.tree import tree_bits

STREAM = b"apel.jobs"


def _bits(pki, name: str) -> bytes:
    return tree_bits(fingerprint(pki[name].certificate))


@pytest.fixture(scope="module")
def tree_run(stream_pki, tmp_path_factory):
    """A key tree run journaled as the publisher driver does: portal, dashboard and central at the start (update
    1), central revoked (update 2), 30 records over both; root records sealed into the batches."""
    directory = tmp_path_factory.mktemp("tree-journal")
    readers = lambda *names: ReaderSet(tuple(Reader(stream_pki[n].certificate) for n in names))  # noqa: E731
    sender = WireSender("apel.jobs", stream_pki["publisher"], readers("portal", "dashboard", "central"),
                        RotationPolicy(mode="tree", max_messages=10)).actions
    journal = Journal(directory)
    journal.open_run(STREAM, sender.stream_id, None)
    key = archive_key(directory, create=True)
    archive, recorder = RootArchive(journal, STREAM, sender.stream_id, key), Recorder(lambda parts: None, journal)
    roots = []

    def record(actions) -> None:
        for a in actions:
            if isinstance(a, Archive):
                roots.append(a.record)
                archive.add(a.record)
            elif isinstance(a, Send):
                (recorder.data(a.parts, sender.stream_id, a.seq, a.epoch) if a.kind == frames.DATA
                 else recorder.checkpoint(a.parts) if a.kind == frames.CHECKPOINT else recorder.control(a.parts))

    record(sender.start(0.0))
    for seq in range(1, 31):
        if seq == 16:
            record(sender.readers_changed(readers("portal", "dashboard"), 1.0))
        record(sender.publish(b"record %d" % seq, 1.0))
    record(sender.flush(1.0))
    assert recorder.commit() and [r.generation for r in roots] == [1, 2]
    return {"directory": directory, "run": sender.stream_id, "roots": roots, "key": key,
            "readers": readers("portal", "dashboard")}


@pytest.fixture
def server(stream_pki, tree_run):
    """``server(roots=True) -> Client``: a ReplayServer over the tree run's journal (with the publisher's
    RootServer, or none: an archive relay's), and a client connected to it."""
    context, started = zmq.Context(), []

    def start(with_roots: bool = True) -> Client:
        roots = RootServer(tree_run["key"], stream_pki["publisher"], lambda: tree_run["readers"],
                           transport=KeyTransport.OAEP) if with_roots else None
        replay = ReplayServer(tree_run["directory"], ["tcp://127.0.0.1:*"], context=context, roots=roots).start()
        client = Client(context, replay.endpoints[0])
        started.append((replay, client))
        return client

    yield start
    for replay, client in started:
        client.close()
        replay.stop()
    context.destroy(linger=0)


def _ask(client: Client, tree_run, rid: int, bits: bytes, generation: int = 1, run: bytes | None = None):
    client.send(codec.Roots(rid, STREAM, run or tree_run["run"], bits, generation))
    return client.collect(rid, timeout=10)


def test_a_reader_gets_the_roots_of_the_updates_it_was_in_and_openssl_opens_them(stream_pki, tree_run, server,
                                                                                  tmp_path):
    client = server()
    got, final = _ask(client, tree_run, 1, _bits(stream_pki, "portal"))
    assert final == (codec.END, [0, 0, 0]) and len(got) == 1
    frame = frames.decode(list(got[0]))
    assert isinstance(frame, frames.TreeAnnouncement) and frame.stream_id == tree_run["run"]
    keys = open_tree_announcement(frame, stream_pki["portal"]).keys
    assert [(k.tag, k.generation, k.key) for k in keys] == [(r.tag, r.generation, r.root) for r in tree_run["roots"]]
    # openssl is an independent peer for the envelope: portal's key opens it, and the record inside is the same
    (tmp_path / "e.der").write_bytes(frame.envelope)
    portal = stream_pki.certs["portal"]
    plain = openssl("cms", "-decrypt", "-inform", "DER", "-in", str(tmp_path / "e.der"), "-recip",
                    str(portal.cert_path), "-inkey", str(portal.key_path)).stdout
    assert [tuple(k) for k in decode_tree_record(plain)[4]] == [(k.tag, k.generation, k.key) for k in keys]
    later, _ = _ask(client, tree_run, 2, _bits(stream_pki, "portal"), generation=2)
    assert [k.generation for k in open_tree_announcement(frames.decode(list(later[0])), stream_pki["portal"]).keys] \
        == [2]


def test_a_revoked_reader_a_stranger_and_an_unknown_run_get_errors(stream_pki, tree_run, server):
    client = server()
    for rid, name in enumerate(("central", "outsider"), start=1):  # central left at update 2; the outsider never in
        got, final = _ask(client, tree_run, rid, _bits(stream_pki, name))
        assert got == [] and final[0] == codec.ERROR and final[1][0] == codec.NOT_A_READER, name
    got, final = _ask(client, tree_run, 3, _bits(stream_pki, "portal"), run=b"\7" * 16)
    assert got == [] and final[1][0] == codec.UNKNOWN_RUN


def test_a_server_that_keeps_no_keys_says_so(stream_pki, tree_run, server):
    got, final = _ask(server(with_roots=False), tree_run, 1, _bits(stream_pki, "portal"))
    assert got == [] and final == (codec.ERROR, [codec.NO_KEYS, final[1][1]])


def test_new_answers_are_rate_limited_and_repeated_questions_cost_nothing(stream_pki, tree_run, monkeypatch):
    assert (roots_module.ANSWERS_PER_SECOND, roots_module.ANSWERS_KEPT) == (20, 1024)  # as §10.4 says
    monkeypatch.setattr(roots_module, "ANSWERS_PER_SECOND", 2)
    now = [0.0]
    answers = RootServer(tree_run["key"], stream_pki["publisher"], lambda: tree_run["readers"],
                         transport=KeyTransport.OAEP, clock=lambda: now[0])
    journal = JournalReader(tree_run["directory"])
    ask = lambda name, generation: answers.answer(journal, codec.Roots(1, STREAM, tree_run["run"],  # noqa: E731
                                                                        _bits(stream_pki, name), generation))
    first, second = ask("portal", 1), ask("dashboard", 1)
    assert isinstance(first, list) and isinstance(second, list)
    assert ask("portal", 2).reason == codec.BUSY  # a third new answer within the second
    assert ask("portal", 1) == first  # the same question again: the same answer, no signature
    now[0] = 1.0
    assert isinstance(ask("portal", 2), list)
    journal.close()


def test_the_archive_key_is_made_owner_only_and_refused_if_others_may_read_it(tmp_path):
    assert archive_key(tmp_path) is None  # not made unless asked
    key = archive_key(tmp_path, create=True)
    assert len(key) == 32 and (tmp_path / KEY_FILE).stat().st_mode & 0o777 == 0o600
    assert archive_key(tmp_path) == key
    (tmp_path / KEY_FILE).chmod(0o640)
    with pytest.raises(InsecureKeyFile):
        archive_key(tmp_path)


def test_a_publisher_never_makes_a_new_key_for_a_journal_whose_roots_need_the_lost_one(tree_run, tmp_path):
    journal_dir = tmp_path / "journal"
    shutil.copytree(tree_run["directory"], journal_dir)
    (journal_dir / KEY_FILE).unlink()
    journal = Journal(journal_dir)
    for tree_mode in (True, False):
        with pytest.raises(KeyFileError, match="restore the file"):
            load_archive_key(journal, tree_mode=tree_mode)
    assert not (journal_dir / KEY_FILE).exists()
    journal.close()
    assert load_archive_key(Journal(tmp_path / "fresh"), tree_mode=False) is None
    assert len(load_archive_key(Journal(tmp_path / "fresh"), tree_mode=True)) == 32


def test_the_live_run_s_newer_roots_are_read_when_asked_for(stream_pki, tmp_path):
    """The publisher's own run goes on making updates: the server reads the run's records again when the journal
    holds newer ones, and only then."""
    readers = lambda *names: ReaderSet(tuple(Reader(stream_pki[n].certificate) for n in names))  # noqa: E731
    sender = WireSender("apel.jobs", stream_pki["publisher"], readers("portal", "dashboard", "central"),
                        RotationPolicy(mode="tree")).actions
    journal = Journal(tmp_path)
    journal.open_run(STREAM, sender.stream_id, None)
    key = archive_key(tmp_path, create=True)
    archive, recorder = RootArchive(journal, STREAM, sender.stream_id, key), Recorder(lambda parts: None, journal)

    def record(actions) -> None:
        for a in actions:
            if isinstance(a, Archive):
                archive.add(a.record)
            elif isinstance(a, Send) and a.kind != frames.DATA:
                recorder.control(a.parts)
        journal.commit()

    record(sender.start(0.0))
    current = [readers("portal", "dashboard", "central")]
    answers = RootServer(key, stream_pki["publisher"], lambda: current[0], transport=KeyTransport.OAEP)
    reader = _CountingReader(tmp_path)
    ask = lambda generation: answers.answer(reader, codec.Roots(1, STREAM, sender.stream_id,  # noqa: E731
                                                                _bits(stream_pki, "portal"), generation))
    assert isinstance(ask(1), list) and ask(2).reason == codec.NOT_A_READER  # no update 2 yet
    assert reader.reads == 1
    record(sender.readers_changed(readers("portal", "dashboard"), 1.0))
    current[0] = readers("portal", "dashboard")
    keys = open_tree_announcement(frames.decode(ask(2)), stream_pki["portal"]).keys
    assert [k.generation for k in keys] == [2] and reader.reads == 2
    reader.close()


class _CountingReader(JournalReader):
    """A journal reader that counts the reads of root records."""

    reads = 0

    def roots(self, stream_id: bytes):
        """The run's sealed root records, counted."""
        self.reads += 1
        return super().roots(stream_id)


def test_a_stranger_costs_no_journal_read_and_a_history_is_read_once(stream_pki, tree_run):
    answers = RootServer(tree_run["key"], stream_pki["publisher"], lambda: tree_run["readers"],
                         transport=KeyTransport.OAEP)
    journal = _CountingReader(tree_run["directory"])
    ask = lambda name: answers.answer(journal, codec.Roots(1, STREAM, tree_run["run"],  # noqa: E731
                                                           _bits(stream_pki, name), 1))
    assert ask("outsider").reason == codec.NOT_A_READER and ask("central").reason == codec.NOT_A_READER
    assert journal.reads == 0  # refused on a dictionary lookup: not in the registry
    assert isinstance(ask("portal"), list) and isinstance(ask("dashboard"), list) and journal.reads == 1
    journal.close()
