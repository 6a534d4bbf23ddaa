"""The replay service (docs/PROTOCOL.md §10.4), a real ReplayServer on loopback over journals of real frames:
a request gets its range in the order of the spec and an ``end``; credit bounds what is sent; unknown runs,
too many requests and garbage get errors while honest clients go on being served; a huge range is served
100,000 frames at a time; and a reader fed what was replayed delivers exactly the records it asked for."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import msgpack
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kit import daemons, ports
from kit.replay_client import Client
from kit.wire import WireSender
from zmqsec.crypto import enveloped
from zmqsec.drivers.journal import Journal
from zmqsec.drivers.recorder import Recorder
from zmqsec.drivers.replay import MAX_CLIENTS, MAX_FRAMES_PER_REQUEST, ReplayServer
from zmqsec.keys.registry import Reader, ReaderSet
from zmqsec.machines.receiver import Delivered, Rejected, StreamReceiver
from zmqsec.machines.sender import RotationPolicy, Send
from zmqsec.protocol import frames
from zmqsec.protocol import replay as codec
from zmqsec.protocol.groups import reader_bits
from zmqsec.protocol.replay import Cancel, Credit, Request

STREAM = b"apel.jobs"
RECORDS = 200  # in the small journals: epochs of 40 records, checkpoints of at most 16
HUGE = MAX_FRAMES_PER_REQUEST + 50


def _payload(seq: int) -> bytes:
    """The record published as data frame ``seq``."""
    return b"record %d" % seq


@dataclass
class Stream:
    """A journal of one publisher run: where it is, the run, and every frame the sender emitted, in order."""

    directory: object
    stream_id: bytes
    sends: list[Send]

    def of(self, kind: bytes) -> list[Send]:
        """The frames of ``kind``, in the order they were sent."""
        return [a for a in self.sends if a.kind == kind]


def _journal_stream(directory, pki, records: int, **policy) -> Stream:
    """Publish ``records`` records with a real :class:`StreamSender` for portal, dashboard and central, through a
    :class:`Recorder` into a journal in ``directory``, as the publisher driver does."""
    readers = ReaderSet(tuple(Reader(pki[n].certificate) for n in ("portal", "dashboard", "central")))
    sender = WireSender("apel.jobs", pki["publisher"], readers, RotationPolicy(**policy)).actions
    journal = Journal(directory)
    journal.open_run(STREAM, sender.stream_id, None)
    recorder = Recorder(lambda parts: None, journal)
    sends: list[Send] = []
    actions = sender.start(0.0)
    for seq in range(1, records + 1):
        actions += sender.publish(_payload(seq), 0.0)
        if len(actions) > 1000 or seq == records:
            actions += sender.flush(0.0) if seq == records else []
            for a in actions:
                if not isinstance(a, Send):
                    continue
                sends.append(a)
                if a.kind == frames.DATA:
                    recorder.data(a.parts, sender.stream_id, a.seq, a.epoch)
                elif a.kind == frames.CHECKPOINT:
                    recorder.checkpoint(a.parts)
                else:
                    recorder.control(a.parts)
            actions = []
    assert recorder.commit() and journal.pending == 0
    journal.close()
    return Stream(directory, sender.stream_id, sends)


@pytest.fixture(scope="module")
def single(stream_pki, tmp_path_factory) -> Stream:
    """A journal of 200 records under one envelope per epoch: five epochs, checkpoints of up to 16 frames."""
    return _journal_stream(tmp_path_factory.mktemp("single"), stream_pki, RECORDS, max_messages=40, checkpoint_max=16)


@pytest.fixture(scope="module")
def grouped(stream_pki, tmp_path_factory) -> Stream:
    """The same in reader-group mode (groups of about one reader): group announcements precede the epochs."""
    return _journal_stream(tmp_path_factory.mktemp("grouped"), stream_pki, RECORDS, max_messages=40,
                           checkpoint_max=16, group_size=1)


@pytest.fixture(scope="module")
def huge(stream_pki, tmp_path_factory) -> Stream:
    """A journal of 100,050 records: more than one request may serve."""
    return _journal_stream(tmp_path_factory.mktemp("huge"), stream_pki, HUGE, checkpoint_max=4096)


@pytest.fixture
def context():
    """A ZeroMQ context of the test's own, ended (with every socket on it) afterwards."""
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


@pytest.fixture
def serve(context):
    """``serve(stream) -> endpoint``: a ReplayServer on loopback over the stream's journal, stopped afterwards."""
    servers = []

    def start(stream: Stream) -> str:
        """Serve ``stream``'s journal; its endpoint."""
        server = ReplayServer(stream.directory, ["tcp://127.0.0.1:*"], context=context).start()
        servers.append(server)
        return server.endpoints[0]

    yield start
    for server in servers:
        server.stop()


def _request(stream: Stream, rid: int, first: int, last: int, credit: int = 100_000, tags: bytes = b"") -> Request:
    """Request ``rid``: ``first..last`` of the stream's run."""
    return Request(rid, STREAM, stream.stream_id, first, last, tags, credit)


# -- what a request gets, and in which order ----------------------------------------------------------

def _announcements(stream: Stream) -> dict[int, tuple[bytes, bytes]]:
    """Each epoch's announcement (its first emission)."""
    out = {}
    for a in stream.of(frames.ANNOUNCEMENT):
        out.setdefault(frames.decode(a.parts).epoch, tuple(a.parts))
    return out


def _groups_needed(stream: Stream, epoch: int, tags: bytes) -> list[tuple[bytes, bytes]]:
    """The group announcements of the reader groups that epoch's key is wrapped for and ``tags`` belongs to."""
    kek_ids = enveloped.recipients(frames.decode(list(_announcements(stream)[epoch])).envelope).kek_ids
    out = []
    for a in stream.of(frames.GROUP):
        g = frames.decode(a.parts)
        if g.tag + b".%d" % g.generation in kek_ids and tags.startswith(g.tag) and tuple(a.parts) not in out:
            out.append(tuple(a.parts))
    return out


def _data_and_checkpoints(stream: Stream, first: int, last: int) -> list[tuple[bytes, bytes]]:
    """Data frames ``first..last`` in order, each checkpoint covering any of them right after the last of
    them it covers (§10.4)."""
    data = [a for a in stream.of(frames.DATA) if first <= a.seq <= last]
    top = data[-1].seq
    after: dict[int, list] = {}
    for c in stream.of(frames.CHECKPOINT):
        checkpoint = frames.decode(c.parts)
        covers_last = checkpoint.first_seq + checkpoint.count - 1
        if checkpoint.first_seq <= top and covers_last >= first:
            after.setdefault(min(covers_last, top), []).append(tuple(c.parts))
    out = []
    for a in data:
        out.append(tuple(a.parts))
        out += after.get(a.seq, [])
    return out


def _spec_answer(stream: Stream, first: int, last: int, tags: bytes = b"") -> list[tuple[bytes, bytes]]:
    """What §10.4 says a request gets, in sequence order: before each epoch's first data frame its group
    announcements (the reader's group's) and its epoch announcement, the run's R frame before the very first
    data frame, each checkpoint right after the last data frame it covers."""
    (run,) = {tuple(a.parts) for a in stream.of(frames.RUN)}
    out: list = []
    epochs: set[int] = set()
    for part in _data_and_checkpoints(stream, first, last):
        frame = frames.decode(list(part))
        if isinstance(frame, frames.DataFrame) and frame.epoch not in epochs:
            epochs.add(frame.epoch)
            out += [g for g in _groups_needed(stream, frame.epoch, tags) if g not in out]
            out.append(_announcements(stream)[frame.epoch])
            if len(epochs) == 1:
                out.append(run)
        out.append(part)
    return out


def _check_essentials(stream: Stream, got: list[tuple[bytes, bytes]], first: int, last: int, tags: bytes = b""):
    """What a reader relies on, whatever the order of the announcements among themselves: every data frame of
    the range once, in order, with the checkpoints right after the last frame each covers; each epoch's
    announcement (after the group keys it needs) and the R frame before the data frames that need them."""
    kinds = [frames.decode(list(f)) for f in got]
    body = [f for f, k in zip(got, kinds) if isinstance(k, (frames.DataFrame, frames.Checkpoint))]
    assert body == _data_and_checkpoints(stream, first, last)
    first_data = next(i for i, k in enumerate(kinds) if isinstance(k, frames.DataFrame))
    epochs = sorted({k.epoch for k in kinds if isinstance(k, frames.DataFrame)})
    announced = [k.epoch for k in kinds if isinstance(k, frames.Announcement)]
    assert sorted(announced) == epochs  # each once, none of another epoch
    for epoch in epochs:
        at = got.index(_announcements(stream)[epoch])
        assert at < next(i for i, k in enumerate(kinds) if isinstance(k, frames.DataFrame) and k.epoch == epoch)
        for group in _groups_needed(stream, epoch, tags):
            assert got.index(group) < at
    assert [i for i, k in enumerate(kinds) if isinstance(k, frames.RunFrame)] and \
        [i for i, k in enumerate(kinds) if isinstance(k, frames.RunFrame)][0] < first_data
    assert sum(isinstance(k, frames.RunFrame) for k in kinds) == 1
    groups = [k for k in kinds if isinstance(k, frames.GroupAnnouncement)]
    assert all(tags.startswith(g.tag) for g in groups)  # only the reader's own group's keys
    assert len(groups) == len({(g.tag, g.generation) for g in groups})


@pytest.mark.parametrize("which,first,last", [("single", 1, 16), ("single", 41, 41), ("single", 185, 200),
                                              ("single", 30, 90), ("grouped", 1, 16), ("grouped", 30, 90)])
def test_a_request_gets_its_range_in_the_order_of_the_spec(stream_pki, request, serve, context, which, first, last):
    stream = request.getfixturevalue(which)
    tags = reader_bits(stream_pki["portal"].certificate) if which == "grouped" else b""
    client = Client(context, serve(stream))
    client.send(_request(stream, 1, first, last, tags=tags))
    got, final = client.collect(1)
    assert final == ("end", [last, 1, RECORDS])
    assert got == _spec_answer(stream, first, last, tags)


@pytest.mark.parametrize("first,last", [(30, 90), (1, 200), (41, 41)])
def test_a_request_gets_what_a_reader_relies_on(single, serve, context, first, last):
    client = Client(context, serve(single))
    client.send(_request(single, 1, first, last))
    got, final = client.collect(1)
    assert final == ("end", [last, 1, RECORDS])
    _check_essentials(single, got, first, last)


def test_a_grouped_request_gets_its_own_groups_keys_first(stream_pki, grouped, serve, context):
    tags = reader_bits(stream_pki["portal"].certificate)
    client = Client(context, serve(grouped))
    client.send(_request(grouped, 1, 30, 90, tags=tags))
    got, final = client.collect(1)
    assert final == ("end", [90, 1, RECORDS])
    _check_essentials(grouped, got, 30, 90, tags)
    assert [f for f in got if isinstance(frames.decode(list(f)), frames.GroupAnnouncement)]  # it needed one


@pytest.mark.parametrize("first,last,served_last,count", [
    (1, 0, RECORDS, RECORDS), (150, 500, RECORDS, 51), (60, 60, 60, 1), (RECORDS + 1, 0, RECORDS, 0),
])
def test_the_end_says_what_was_served_and_what_the_journal_holds(single, serve, context, first, last, served_last, count):
    client = Client(context, serve(single))
    client.send(_request(single, 5, first, last))
    got, final = client.collect(5)
    assert final == ("end", [served_last, 1, RECORDS])
    assert sum(isinstance(frames.decode(list(f)), frames.DataFrame) for f in got) == count


def test_credit_limits_what_is_sent_until_more_is_granted(single, serve, context):
    endpoint = serve(single)
    client = Client(context, endpoint)
    client.send(_request(single, 1, 1, 50))
    everything, _ = client.collect(1)

    client.send(_request(single, 2, 1, 50, credit=5))
    got, final = client.collect(2, limit=5)
    assert final is None and client.receive(0.5) is None  # five, then nothing until more credit
    client.send(Credit(2, 7))
    more, final = client.collect(2, limit=7)
    assert final is None and client.receive(0.5) is None
    client.send(Credit(2, 10_000))
    rest, final = client.collect(2)
    assert final == ("end", [50, 1, RECORDS])
    assert got + more + rest == everything and len(rest) == len(everything) - 12


def test_a_credit_that_covers_every_frame_still_gets_the_end(single, serve, context):
    client = Client(context, serve(single))
    client.send(_request(single, 1, 1, 50))
    everything, _ = client.collect(1)
    client.send(_request(single, 2, 1, 50, credit=len(everything)))
    got, final = client.collect(2, timeout=5.0)
    assert got == everything and final == ("end", [50, 1, RECORDS])


def client_detail(run: bytes) -> str:
    """The detail the server gives for an unknown run."""
    return f"run {run.hex()} is not in this journal"


def test_a_cancelled_request_gets_nothing_more(single, serve, context):
    client = Client(context, serve(single))
    client.send(_request(single, 3, 1, 200, credit=4))
    got, _ = client.collect(3, limit=4)
    client.send(Cancel(3))
    client.send(Credit(3, 1000))  # for a request that is no more
    client.send(Request(5, STREAM, bytes(16), 1, 0, b"", 10))  # answered at once: the server read the above
    assert client.receive(5.0)[:3] == ("error", 5, ["unknown-run", client_detail(bytes(16))])
    assert client.receive(0.5) is None


def test_an_unknown_run_is_an_error_not_an_empty_end(single, serve, context):
    client = Client(context, serve(single))
    client.send(Request(9, STREAM, bytes(16), 1, 0, b"", 100))
    assert client.collect(9) == ([], ("error", ["unknown-run", client_detail(bytes(16))]))
    client.send(Request(10, b"apel.other", single.stream_id, 1, 0, b"", 100))  # the run, under another name
    assert client.collect(10)[1][1][0] == "unknown-run"


def test_more_than_16_requests_in_flight_are_busy(single, serve, context):
    client = Client(context, serve(single))
    for rid in range(1, 17):
        client.send(_request(single, rid, 1, 200, credit=0))  # in flight: waiting for credit
    client.send(_request(single, 17, 1, 200, credit=10))
    assert client.collect(17) == ([], ("error", ["busy", "too many clients or requests in flight; ask again later"]))
    client.send(Cancel(1))
    client.send(_request(single, 18, 1, 3))
    got, final = client.collect(18)
    assert final == ("end", [3, 1, RECORDS])


def test_64_clients_are_served_at_once(single, serve, context):
    """§10.4: at most 16 requests in flight per client and 64 clients."""
    assert MAX_CLIENTS == 64
    endpoint = serve(single)
    clients = [Client(context, endpoint) for _ in range(MAX_CLIENTS + 1)]
    refused = []
    for n, client in enumerate(clients[:MAX_CLIENTS]):
        client.send(_request(single, 1, 1, 2, credit=0))  # in flight, waiting for credit
        client.send(Request(2, STREAM, bytes(16), 1, 0, b"", 0))  # answered once the request above was read
        while (answer := client.receive(10.0)) is not None and answer[1] != 2:
            refused.append((n, answer[2][0]))  # an answer to request 1 already: it was refused
        assert answer is not None
    assert refused == [], f"{len(refused)} of {MAX_CLIENTS} clients refused, the first: {refused[0]}"
    clients[MAX_CLIENTS].send(_request(single, 1, 1, 2, credit=0))
    assert clients[MAX_CLIENTS].collect(1, timeout=10.0)[1][1][0] == "busy"  # the 65th
    for client in clients[:MAX_CLIENTS]:
        client.send(Credit(1, 100))
        assert client.collect(1, timeout=10.0)[1] == ("end", [2, 1, RECORDS])


def test_a_huge_range_is_served_100000_frames_per_request(huge, serve, context):
    client = Client(context, serve(huge))
    client.send(_request(huge, 1, 1, 0, credit=codec.MAX_CREDIT))
    got, final = client.collect(1, timeout=120.0)
    data = [frames.decode(list(f)) for f in got if f[0].endswith(b"\0D")]
    assert final == ("end", [MAX_FRAMES_PER_REQUEST, 1, HUGE])
    assert [d.seq for d in data] == list(range(1, MAX_FRAMES_PER_REQUEST + 1))
    client.send(_request(huge, 2, MAX_FRAMES_PER_REQUEST + 1, 0, credit=codec.MAX_CREDIT))  # and on from there
    got, final = client.collect(2, timeout=60.0)
    assert final == ("end", [HUGE, 1, HUGE])
    assert [frames.decode(list(f)).seq for f in got if f[0].endswith(b"\0D")] == list(range(MAX_FRAMES_PER_REQUEST + 1, HUGE + 1))


# -- garbage, while an honest client is served -------------------------------------------------------

class HonestClient(threading.Thread):
    """A reader asking for 1..20 again and again on its own socket, checking every answer; ``answered`` holds
    the times its answers completed, ``wrong`` any answer that was not exactly right."""

    def __init__(self, context: zmq.Context, endpoint: str, stream: Stream) -> None:
        """A client of the server at ``endpoint`` serving ``stream`` (started with :meth:`start`)."""
        super().__init__(daemon=True)
        self.context, self.endpoint, self.stream = context, endpoint, stream
        self.answered: list[float] = []
        self.wrong: list[str] = []
        self.halt = threading.Event()

    def run(self) -> None:
        """Ask, check, record, until :attr:`halt` is set or an answer does not come."""
        client = Client(self.context, self.endpoint)
        expected = _spec_answer(self.stream, 1, 20)
        rid = 0
        try:
            while not self.halt.is_set():
                rid += 1
                client.send(_request(self.stream, rid, 1, 20))
                try:
                    got, final = client.collect(rid, timeout=10.0)
                except AssertionError as exc:
                    self.wrong.append(str(exc))
                    return
                if final != ("end", [20, 1, RECORDS]) or [f for f in got if f[0].endswith(b"\0D")] != \
                        [f for f in expected if f[0].endswith(b"\0D")]:
                    self.wrong.append(f"request {rid}: {final}, {len(got)} frames")
                self.answered.append(time.monotonic())
        finally:
            client.close()


_fields = st.one_of(st.integers(-2**63, 2**64 - 1), st.binary(max_size=64), st.text(max_size=16), st.none(),
                    st.booleans(), st.floats(allow_nan=False))
_garbage = st.one_of(
    st.lists(st.binary(max_size=1000), min_size=1, max_size=4),  # raw bytes, and wrong part counts
    st.builds(lambda v, k, f: [msgpack.packb([v, k, *f], use_bin_type=True)], st.sampled_from([1, 2, "1"]),
              st.sampled_from(["request", "credit", "cancel", "end", "frame", "x", ""]), st.lists(_fields, max_size=9)),
)


def test_garbage_gets_an_error_or_is_dropped_while_an_honest_client_is_served(single, serve, context):
    endpoint = serve(single)
    honest = HonestClient(context, endpoint, single)
    honest.start()
    fuzzer = Client(context, endpoint)
    probes = iter(range(10**6, 10**7))
    answers: list[str] = []

    @settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
    @given(_garbage)
    def garbage(parts):
        """Send ``parts`` from a raw DEALER; every answer before the probe's must be an error."""
        fuzzer.sock.send_multipart(parts)
        probe = next(probes)  # then a request whose answer is known: what came before it answered the garbage
        fuzzer.send(Request(probe, STREAM, bytes(16), 1, 0, b"", 10))
        while True:
            message = fuzzer.receive(10.0)
            assert message is not None, "the server stopped answering"
            kind, rid, rest, _ = message
            if rid == probe and kind == "error" and rest[0] == "unknown-run":
                return
            assert kind == "error", message  # never a frame or an end for garbage
            answers.append(rest[0])

    started = time.monotonic()
    try:
        garbage()
        ended = time.monotonic()
    finally:
        honest.halt.set()
        honest.join(30)
    assert honest.wrong == []
    assert len([t for t in honest.answered if started <= t <= ended]) >= 5  # served meanwhile, again and again
    assert "bad-request" in answers  # garbage was answered, not only dropped


def test_an_oversized_message_is_dropped_and_the_server_goes_on(single, serve, context):
    endpoint = serve(single)
    rogue = Client(context, endpoint)
    rogue.sock.send(b"\x99" + b"x" * 5000)  # over the socket's message size limit: the connection is dropped
    assert rogue.receive(0.5) is None
    client = Client(context, endpoint)
    client.send(_request(single, 1, 1, 3))
    assert client.collect(1)[1] == ("end", [3, 1, RECORDS])


# -- a reader fed what was replayed ----------------------------------------------------------------------

@pytest.mark.parametrize("which,first,last", [("single", 30, 90), ("single", 1, 200), ("grouped", 30, 90),
                                              ("grouped", 161, 0)])
def test_a_reader_fed_the_replay_delivers_exactly_the_records_it_asked_for(stream_pki, request, serve, context,
                                                                           which, first, last):
    stream = request.getfixturevalue(which)
    tags = reader_bits(stream_pki["portal"].certificate) if which == "grouped" else b""
    client = Client(context, serve(stream))
    client.send(_request(stream, 1, first, last, credit=512, tags=tags))
    receiver = StreamReceiver(stream_pki["portal"], stream_pki.trust)
    receiver.expect(stream.stream_id, first)
    events, served, now = [], 0, 0.0
    while True:
        message = client.receive(10.0)
        assert message is not None
        kind, _, rest, parts = message
        if kind != codec.FRAME:
            assert kind == "end", message
            break
        events += receiver.frame_received(list(parts), now, replayed=True)
        served += 1
        if served % 256 == 0:
            client.send(Credit(1, 256))  # as a reader grants: as it consumes
    events += receiver.tick(1.0)
    last = last or RECORDS
    delivered = [e for e in events if isinstance(e, Delivered)]
    assert [(e.seq, e.payload) for e in delivered] == [(seq, _payload(seq)) for seq in range(first, last + 1)]
    assert {e.stream_id for e in delivered} == {stream.stream_id}
    assert [e for e in events if isinstance(e, Rejected)] == []


def test_garbage_at_a_live_publisher_s_replay_endpoint_leaves_its_stream_unaffected(site):
    """``zmqsec publish`` with a journal and a replay endpoint, and a reader storing its stream: while hypothesis
    garbage and honest requests hit the replay endpoint, 300 records published at about 100/s all reach the
    reader, each once, in order, each within 2 s of being fed; the replay endpoint still serves afterwards."""
    d = site.dir
    endpoint, replay = ports.tcp_endpoint(), ports.tcp_endpoint()
    logs = daemons.logs(site, "publisher", "portal")
    pub = daemons.publisher(site, endpoint, journal=d / "journal", replay_endpoint=replay)
    reader = daemons.subscriber(site, "portal", endpoint)
    context = zmq.Context()
    fuzzer = Client(context, replay)
    late: list[int] = []
    try:
        daemons.wait(lambda: daemons.status(site, "portal").get("epoch") == 1, what="key", logs=logs)
        fed = 0

        @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
        @given(_garbage)
        def garbage(parts):
            nonlocal fed
            fuzzer.sock.send_multipart(parts)
            if fed < 300:
                daemons.feed(site, 1, start=fed)
                fed += 1
                if fed % 50 == 0:  # every 50 records: the ones fed 2 s ago are stored
                    deadline = time.monotonic() + 2.0
                    while len(daemons.bodies(site, "portal")) < fed - 20 and time.monotonic() < deadline:
                        time.sleep(0.05)
                    if len(daemons.bodies(site, "portal")) < fed - 20:
                        late.append(fed)
            time.sleep(0.01)

        garbage()
        if fed < 300:
            daemons.feed(site, 300 - fed, start=fed)
        daemons.wait(lambda: len(daemons.bodies(site, "portal")) == 300, what="all 300", logs=logs)
        assert pub.poll() is None, "the publisher died"
        run = bytes.fromhex(daemons.status(site, "portal")["position"]["run"])
        honest = Client(context, replay)  # the fuzzer's socket still holds answers to garbage
        try:
            honest.send(Request(1, STREAM, run, 1, 300, b"", 1000))
            got, final = honest.collect(1)
        finally:
            honest.close()
        assert final[0] == "end" and final[1][0] == 300  # served to the last record
    finally:
        fuzzer.close()
        context.term()
        daemons.stop(pub, reader)
    assert late == []
    daemons.in_stream_order(site, "portal", [f"job {i}" for i in range(300)])
