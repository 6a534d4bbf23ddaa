"""The reader registry: who may read a stream, as the publisher will see it."""

from __future__ import annotations

import pytest

from kit.opensslpeer import run
from kit.pki import Pki, new_ca
from zmqsec.keys.ca import Role
from zmqsec.keys.dn import DnAllowList
from zmqsec.keys.errors import RegistryError
from zmqsec.keys.registry import ReaderRegistry, fingerprint
from zmqsec.keys.trust import CrlPolicy, TrustStore


@pytest.fixture
def readers(ca, tmp_path):
    """Reader certificates portal, dashboard and central from the ``ca`` fixture, by name."""
    return Pki.under(ca, tmp_path, portal=Role.READER, dashboard=Role.READER, central=Role.READER).certs


def test_add_list_remove_through_the_cli(ca, readers, tmp_path, run_cli):
    registry = tmp_path / "readers"
    code, out, err = run_cli("keys", "readers", "--registry", registry, "add", "--trust", ca.trust_dir,
                             *(r.cert_path for r in readers.values()))
    assert code == 0, err
    assert out.count("added ") == 3
    code, out, _ = run_cli("keys", "readers", "--registry", registry, "list", "--trust", ca.trust_dir)
    assert "3 authorized, 0 refused" in out
    # Remove by DN, by fingerprint prefix (as openssl prints it, with colons), by file name.
    code, out, err = run_cli("keys", "readers", "--registry", registry, "remove", "/C=UK/O=zmqsec test/CN=portal.example.org")
    assert code == 0 and "removed /C=UK/O=zmqsec test/CN=portal.example.org" in out, err
    openssl_fp = run("x509", "-in", str(readers["dashboard"].cert_path), "-noout", "-fingerprint", "-sha256").stdout.decode()
    colon_prefix = openssl_fp.split("=", 1)[1].strip()[:23]
    code, out, err = run_cli("keys", "readers", "--registry", registry, "remove", colon_prefix)
    assert code == 0 and "dashboard" in out, err
    snapshot = ReaderRegistry(registry).load()
    assert [r.dn for r in snapshot] == ["/C=UK/O=zmqsec test/CN=central.example.org"]
    code, _, err = run_cli("keys", "readers", "--registry", registry, "remove", "/CN=nobody")
    assert code == 1 and "no reader" in err


def test_fingerprint_matches_openssl(readers):
    r = readers["portal"]
    out = run("x509", "-in", str(r.cert_path), "-noout", "-fingerprint", "-sha256").stdout.decode()
    assert out.split("=", 1)[1].strip().replace(":", "").lower() == fingerprint(r.certificate)


def test_duplicate_add_is_refused(ca, readers, tmp_path):
    registry = ReaderRegistry(tmp_path / "readers")
    registry.add(readers["portal"].certificate)
    with pytest.raises(RegistryError, match="already registered"):
        registry.add(readers["portal"].certificate)


def test_revoked_and_unparseable_entries_are_refused_not_fatal(ca, readers, tmp_path):
    registry = ReaderRegistry(tmp_path / "readers")
    for r in readers.values():
        registry.add(r.certificate)
    (tmp_path / "readers" / "junk.pem").write_text("not a certificate")
    ca.revoke(readers["dashboard"].certificate)
    snapshot = registry.load(TrustStore.from_directory(ca.trust_dir))
    assert sorted(r.dn.rsplit("=", 1)[1] for r in snapshot) == ["central.example.org", "portal.example.org"]
    assert sorted(r.reason for r in snapshot.refused) == ["revoked", "unreadable"]


def test_certificate_that_cannot_receive_keys_is_refused(ca, tmp_path):
    publisher = ca.issue(role=Role.PUBLISHER, cn="publisher", out_dir=tmp_path)
    registry = ReaderRegistry(tmp_path / "readers")
    with pytest.raises(Exception) as exc:
        registry.add(publisher.certificate, TrustStore.from_directory(ca.trust_dir))
    assert exc.value.reason == "wrong-key-usage"


def test_dn_allow_list_narrows_the_registry(ca, readers, tmp_path):
    dn_file = tmp_path / "valid_dns"
    dn_file.write_text("# readers allowed by the VO\n/C=UK/O=zmqsec test/CN=portal.example.org\n\n")
    registry = ReaderRegistry(tmp_path / "readers", dn_file)
    for r in readers.values():
        ReaderRegistry(tmp_path / "readers").add(r.certificate)
    snapshot = registry.load()
    assert [r.dn for r in snapshot] == ["/C=UK/O=zmqsec test/CN=portal.example.org"]
    assert {r.reason for r in snapshot.refused} == {"dn-not-allowed"}
    # Removing by DN takes it off the list too; the snapshot is a new, smaller set.
    registry.remove("/C=UK/O=zmqsec test/CN=portal.example.org")
    assert "/C=UK/O=zmqsec test/CN=portal.example.org" not in DnAllowList.load(dn_file)
    assert len(registry.load()) == 0
    assert not snapshot.same_readers(registry.load())


def test_malformed_allow_list_names_the_line(tmp_path):
    dn_file = tmp_path / "valid_dns"
    dn_file.write_text("/C=UK/CN=ok\nCN=missing-slash\n")
    with pytest.raises(RegistryError, match=r"valid_dns:2: 'CN=missing-slash'"):
        DnAllowList.load(dn_file)


def test_missing_registry_directory(tmp_path, run_cli):
    code, _, err = run_cli("keys", "readers", "--registry", tmp_path / "none", "list")
    assert code == 1 and "reader registry not found" in err


def test_the_publishers_watch_sees_every_revocation_despite_its_caches(ca, readers, tmp_path):
    """RegistryWatch reuses parsed files and verdicts between reloads; none of that may keep a reader that
    is revoked by CRL (even past a dangling hash link, or a CRL rewritten without any visible change of
    size or time), nor a certificate replaced in place with identical size and mtime."""
    import os
    import shutil

    from zmqsec.drivers.publisher import RegistryWatch

    registry = ReaderRegistry(tmp_path / "readers")
    paths = {name: registry.add(r.certificate).path for name, r in readers.items()}
    os.symlink(tmp_path / "gone.pem", ca.trust_dir / "deadbeef.0")  # a CA removed without `rehash`
    watch = RegistryWatch(registry, ca.trust_dir, recheck_interval=3600)
    assert len(watch.load()) == 3 and not watch.changed()

    crl = next(ca.trust_dir.glob("*.r0"))
    before = crl.stat()
    ca.revoke(readers["dashboard"].certificate)
    assert watch.changed()  # the CRL changed: seen, although one entry of the directory is a dangling link
    assert "dashboard.example.org" not in {r.dn.rsplit("=", 1)[1] for r in watch.load()}

    # A CRL rewritten with the old size and times is still caught by the periodic recheck.
    ca.revoke(readers["central"].certificate)
    os.utime(crl, ns=(before.st_atime_ns, before.st_mtime_ns))
    watch.recheck_interval = 0
    assert watch.changed()
    assert {r.dn.rsplit("=", 1)[1] for r in watch.load()} == {"portal.example.org"}

    # portal's file replaced in place by another certificate, with portal's size and mtime.
    st = paths["portal"].stat()
    for attempt in range(50):  # a random serial number or signature may come out a byte shorter: issue again
        other = ca.issue(role=Role.READER, cn="portal.example.orh", out_dir=tmp_path / f"other{attempt}")
        if other.cert_path.stat().st_size == st.st_size:
            break
    assert other.cert_path.stat().st_size == st.st_size
    shutil.copyfile(other.cert_path, paths["portal"])
    os.utime(paths["portal"], ns=(st.st_atime_ns, st.st_mtime_ns))
    assert [r.dn.rsplit("=", 1)[1] for r in watch.load()] == ["portal.example.orh"]


def test_a_new_crl_validates_again_only_the_readers_it_lists(ca, tmp_path):
    """Verdicts kept across trust stores with the same CAs: a new CRL re-checks only the certificates whose
    serial it lists (refusals are re-examined at every load anyway); a CRL that does not verify, or another CA,
    re-checks everything."""
    from unittest import mock

    from zmqsec.keys.ca import generate_key
    from zmqsec.keys.registry import LoadCache

    shared = generate_key()
    pki = Pki.under(ca, tmp_path / "pki")
    for i in range(12):
        pki.issue(f"r{i}", Role.READER, key=shared)
    registry = ReaderRegistry(tmp_path / "readers")
    for issued in pki.certs.values():
        registry.add(issued.certificate)
    serial = {name: issued.certificate.serial_number for name, issued in pki.certs.items()}
    checked: list[int] = []
    validate = TrustStore.validate

    def counting(store, cert, **options):
        checked.append(cert.serial_number)
        return validate(store, cert, **options)

    cache = LoadCache()
    with mock.patch.object(TrustStore, "validate", counting):
        assert len(registry.load(TrustStore.from_directory(ca.trust_dir), cache=cache)) == 12
        assert len(checked) == 12
        ca.revoke(pki.certs["r3"].certificate)
        checked.clear()
        readers = registry.load(TrustStore.from_directory(ca.trust_dir), cache=cache)
        assert serial["r3"] not in {r.certificate.serial_number for r in readers} and len(readers) == 11
        assert checked == [serial["r3"]]
        ca.revoke(pki.certs["r5"].certificate)  # the new CRL lists r3 (refused: looked at again) and r5
        checked.clear()
        assert len(registry.load(TrustStore.from_directory(ca.trust_dir), cache=cache)) == 10
        assert sorted(checked) == sorted([serial["r3"], serial["r5"]])

        # A CRL of the same issuer name signed by another key: every reader of that CA is checked, and refused.
        other = new_ca(tmp_path / "other", "/C=UK/O=zmqsec test/CN=Test CA")
        checked.clear()
        forged = TrustStore.from_certificates([ca.certificate], [other.current_crl()])
        assert len(registry.load(forged, cache=cache)) == 0 and len(checked) == 12
        # Another CA beside the first: everything is checked again.
        good = TrustStore.from_certificates([ca.certificate], [ca.current_crl()])
        assert len(registry.load(good, cache=cache)) == 10
        checked.clear()
        another = new_ca(tmp_path / "another", "/C=UK/O=zmqsec test/CN=Another CA")
        both = TrustStore.from_certificates([ca.certificate, another.certificate], [ca.current_crl()])
        assert len(registry.load(both, cache=cache)) == 10 and len(checked) == 12
        # Other validation options: everything is checked again.
        checked.clear()
        assert len(registry.load(both, crl=CrlPolicy.IF_PRESENT, cache=cache)) == 10 and len(checked) == 12


def test_a_crl_revoking_an_intermediate_ca_refuses_every_reader_under_it_at_once(tmp_path):
    """The verdicts kept across a new CRL (above) are not kept for readers under an intermediate CA that the
    new CRL of its issuer revokes: with every link's CRL checked, all of them are refused, as openssl does."""
    from kit.opensslpeer import OpensslCA, install
    from zmqsec.keys.pemfiles import load_certificate
    from zmqsec.keys.registry import LoadCache

    root = OpensslCA(tmp_path / "root", "/DC=org/DC=example/CN=Example Root CA")
    issuing = OpensslCA(tmp_path / "issuing", "/DC=org/DC=example/CN=Example Issuing CA", parent=root)
    registry = ReaderRegistry(tmp_path / "readers")
    leaves = [issuing.issue(f"r{i}", f"reader{i}.example.org", "v3_encrypt") for i in range(3)]
    for leaf in leaves:
        registry.add(load_certificate(leaf))

    def store(name: str) -> TrustStore:
        install(tmp_path / name, root.cert, issuing.cert, root.gencrl(), issuing.gencrl())
        return TrustStore.from_directory(tmp_path / name)

    cache = LoadCache()
    assert len(registry.load(store("before"), crl_all=True, cache=cache)) == 3
    root.revoke(issuing.cert)
    after = store("after")
    assert len(registry.load(after, crl_all=True, cache=cache)) == 0
    for leaf in leaves:
        out = run("verify", "-CApath", str(tmp_path / "after"), "-crl_check_all", str(leaf), check=False)
        assert out.returncode != 0 and b"revoked" in out.stdout + out.stderr


def test_a_large_cold_load_is_judged_in_worker_processes_with_the_same_verdicts(ca, tmp_path, monkeypatch):
    """From PARALLEL_FROM certificates to judge, a load parses and validates them in one worker process per
    core; it gives the same readers and refusals as a load in one process, and validates again in this
    process only what the workers refused (for the refusal's message)."""
    import os
    from unittest import mock

    from zmqsec.drivers import coldload
    from zmqsec.keys.ca import generate_key
    from zmqsec.keys.registry import LoadCache

    assert len(os.sched_getaffinity(0)) >= 2, "a load spreads over the cores only where there are two"
    assert coldload.PARALLEL_FROM == 2000  # what docs/performance.md says; 20 here, to keep the test small
    monkeypatch.setattr(coldload, "PARALLEL_FROM", 20)
    shared = generate_key()
    pki = Pki.under(ca, tmp_path / "pki")
    for i in range(40):
        pki.issue(f"r{i:02d}", Role.READER, key=shared)
    pki.issue("signer", Role.PUBLISHER)  # no key encipherment: refused
    registry = ReaderRegistry(tmp_path / "readers")
    for issued in pki.certs.values():
        registry.add(issued.certificate)
    ca.revoke(pki.certs["r07"].certificate)
    (tmp_path / "readers" / "garbage.pem").write_bytes(b"-----BEGIN CERTIFICATE-----\nnot one\n")
    trust = TrustStore.from_directory(ca.trust_dir)

    alone = registry.load(trust, cache=LoadCache())
    checked: list[int] = []
    validate = TrustStore.validate

    def counting(store, cert, **options):
        checked.append(cert.serial_number)
        return validate(store, cert, **options)

    with mock.patch.object(TrustStore, "validate", counting):
        spread = registry.load(trust, cache=LoadCache(), prejudge=coldload.prejudge)
    assert [r.fingerprint for r in spread] == [r.fingerprint for r in alone] and len(spread) == 39
    assert sorted((r.path.name, r.reason) for r in spread.refused) == sorted((r.path.name, r.reason)
                                                                             for r in alone.refused)
    assert {r.path.name for r in spread.refused} >= {"garbage.pem"} and len(spread.refused) == 3
    refused_serials = {pki.certs["r07"].certificate.serial_number, pki.certs["signer"].certificate.serial_number}
    assert set(checked) <= refused_serials, "this process validated what the workers had accepted"


def test_a_trust_store_checks_a_crl_signature_once_for_all_the_certificates_under_it(ca, tmp_path, monkeypatch):
    from zmqsec.keys import trust as trust_module
    from zmqsec.keys.trust import Usage

    pki = Pki.under(ca, tmp_path / "pki", a=Role.READER, b=Role.READER, c=Role.READER)
    calls = []
    check = trust_module._crl_signed_by
    monkeypatch.setattr(trust_module, "_crl_signed_by", lambda crl, issuer: calls.append(1) or check(crl, issuer))
    store = TrustStore.from_directory(ca.trust_dir)
    for issued in pki.certs.values():
        store.validate(issued.certificate, usage=Usage.ENCRYPT)
    assert len(calls) == 1
    TrustStore.from_directory(ca.trust_dir).validate(pki.certs["a"].certificate, usage=Usage.ENCRYPT)
    assert len(calls) == 2  # a new store checks again


def test_a_reload_between_rechecks_sees_files_replaced_by_rename_with_no_stat_of_the_others(ca, readers, tmp_path,
                                                                                              monkeypatch):
    """A reload that is not a recheck takes unchanged files by name and inode, from the listing alone: a file
    replaced by rename (our tools, mv) has a new inode and is read again; one rewritten in place is read again
    by the next reload that stats every file (RegistryWatch: once a recheck interval)."""
    import os
    import shutil

    from zmqsec.keys import registry as module
    from zmqsec.keys.registry import LoadCache

    registry = ReaderRegistry(tmp_path / "readers")
    paths = {name: registry.add(r.certificate).path for name, r in readers.items()}
    trust, cache = TrustStore.from_directory(ca.trust_dir), LoadCache()
    assert len(registry.load(trust, cache=cache)) == 3
    stats = []
    real = module.stat_key
    monkeypatch.setattr(module, "stat_key", lambda *args: stats.append(args[0]) or real(*args))

    other = ca.issue(role=Role.READER, cn="renamed.example.org", out_dir=tmp_path / "other")
    staged = paths["portal"].with_suffix(".tmp")
    shutil.copyfile(other.cert_path, staged)
    os.rename(staged, paths["portal"])
    names = {r.dn.rsplit("=", 1)[1] for r in registry.load(trust, cache=cache, restat=False)}
    assert names == {"renamed.example.org", "dashboard.example.org", "central.example.org"}
    assert stats == [paths["portal"].name]  # only the file with a new inode

    inplace = ca.issue(role=Role.READER, cn="inplace.example.org", out_dir=tmp_path / "other2")
    shutil.copyfile(inplace.cert_path, paths["dashboard"])  # same inode
    assert "inplace.example.org" not in {r.dn.rsplit("=", 1)[1] for r in registry.load(trust, cache=cache,
                                                                                          restat=False)}
    assert "inplace.example.org" in {r.dn.rsplit("=", 1)[1] for r in registry.load(trust, cache=cache)}


def _judged(monkeypatch) -> list[str]:
    """The file names the registry judges from now on (parsed, checked, validated)."""
    from zmqsec.keys import registry as module

    judged, real = [], module._Judge.__call__
    monkeypatch.setattr(module._Judge, "__call__", lambda self, directory, name, reader: judged.append(name)
                        or real(self, directory, name, reader))
    return judged


def _same(a, b) -> bool:
    """Do two loads authorize the same certificates and refuse the same files for the same reasons?"""
    return a.fingerprints == b.fingerprints and \
        sorted((r.path.name, r.reason) for r in a.refused) == sorted((r.path.name, r.reason) for r in b.refused)


def test_a_reload_judges_only_the_files_added_or_replaced_and_the_refusals(ca, readers, tmp_path, monkeypatch):
    """Between rechecks, a publisher's reload of 100,000 readers must not cost a pass over all of them: a
    removal or an addition is judged alone (refusals again: a certificate not yet valid becomes valid), and
    the result is what a full load gives."""
    import os

    from zmqsec.keys.registry import LoadCache

    registry = ReaderRegistry(tmp_path / "readers")
    paths = {name: registry.add(r.certificate).path for name, r in readers.items()}
    (tmp_path / "readers" / "junk.pem").write_text("not a certificate")
    trust, cache = TrustStore.from_directory(ca.trust_dir), LoadCache()
    registry.load(trust, cache=cache)
    judged = _judged(monkeypatch)
    os.unlink(paths["portal"])
    added = registry.add(Pki.under(ca, tmp_path / "more", late=Role.READER).certs["late"].certificate)
    quick = registry.load(trust, cache=cache, restat=False)
    assert sorted(judged) == sorted([added.path.name, "junk.pem"])
    assert _same(quick, ReaderRegistry(tmp_path / "readers").load(trust))
    assert len(quick) == 3 and [r.path.name for r in quick.refused] == ["junk.pem"]


def test_a_reload_after_a_change_of_basis_judges_everything(ca, readers, tmp_path, monkeypatch):
    """Another trust store object, allow-list or validation options: every file is judged again."""
    from zmqsec.keys.registry import LoadCache

    dns = tmp_path / "dns"
    registry = ReaderRegistry(tmp_path / "readers", dns)
    for r in readers.values():
        registry.add(r.certificate)
    trust, cache = TrustStore.from_directory(ca.trust_dir), LoadCache()
    assert len(registry.load(trust, cache=cache)) == 3  # add() put each DN on the allow-list
    judged = _judged(monkeypatch)
    lines = dns.read_text().splitlines()
    dns.write_text("\n".join(lines[1:]) + "\n")
    assert len(registry.load(trust, cache=cache, restat=False)) == 2 and len(judged) == 3
    judged.clear()
    assert len(registry.load(TrustStore.from_directory(ca.trust_dir), cache=cache, restat=False)) == 2
    assert len(judged) == 3


def test_reloads_through_any_changes_give_what_a_full_load_gives(ca, tmp_path):
    """Adds, removals, files replaced by rename, garbage, one certificate under two names, many changes at
    once: after each step the reload with the cache equals a load from scratch."""
    import os
    import random
    import shutil

    from zmqsec.keys.registry import LoadCache

    pki = Pki.under(ca, tmp_path / "pool", **{f"r{i}": Role.READER for i in range(8)})
    pool = list(pki.certs.values())
    directory = tmp_path / "readers"
    registry, trust, cache = ReaderRegistry(directory), TrustStore.from_directory(ca.trust_dir), LoadCache()
    directory.mkdir()
    rng = random.Random(5)
    for step in range(40):
        names = sorted(os.listdir(directory))
        action = rng.choice(["add", "add", "remove", "replace", "garbage"] * 3 + ["many"])
        if action == "add" or not names:
            shutil.copyfile(rng.choice(pool).cert_path, directory / f"f{step}.pem")  # may duplicate one
        elif action == "remove":
            os.unlink(directory / rng.choice(names))
        elif action == "replace":
            staged = directory / "staged.tmp"
            shutil.copyfile(rng.choice(pool).cert_path, staged)
            os.rename(staged, directory / rng.choice(names))
        elif action == "garbage":
            (directory / f"g{step}.pem").write_text("garbage")
        else:  # more changes than a reload takes one by one: all of it replaced
            for name in names:
                os.unlink(directory / name)
            for i in range(70):
                os.link(rng.choice(pool).cert_path, directory / f"m{step}-{i}.pem")
        quick = registry.load(trust, cache=cache, restat=False)
        assert _same(quick, ReaderRegistry(directory).load(trust)), f"step {step}: {action}"


def test_a_reload_after_a_verdict_expired_judges_everything(ca, readers, tmp_path):
    """A reload between rechecks may take the last verdicts only while none of them has expired."""
    import datetime as dt

    from zmqsec.keys.registry import LoadCache

    registry = ReaderRegistry(tmp_path / "readers")
    for r in readers.values():
        registry.add(r.certificate)
    trust, cache = TrustStore.from_directory(ca.trust_dir), LoadCache()
    assert len(registry.load(trust, cache=cache)) == 3
    assert len(registry.load(trust, cache=cache, restat=False)) == 3
    later = trust.valid_until + dt.timedelta(days=1)  # the CRL is out of date by then
    reloaded = registry.load(trust, cache=cache, restat=False, at=later)
    assert len(reloaded) == 0 and {r.reason.value for r in reloaded.refused} == {"crl-expired"}


def test_a_reload_sees_the_target_of_a_symbolic_link_replaced(ca, readers, tmp_path):
    """A registry of links to certificates kept elsewhere: replacing a link's target is a change."""
    import os
    import shutil

    from zmqsec.keys.registry import LoadCache

    kept, directory = tmp_path / "kept", tmp_path / "readers"
    kept.mkdir()
    directory.mkdir()
    shutil.copyfile(readers["portal"].cert_path, kept / "one.pem")
    os.symlink(kept / "one.pem", directory / "one.pem")
    registry, trust, cache = ReaderRegistry(directory), TrustStore.from_directory(ca.trust_dir), LoadCache()
    assert [r.certificate for r in registry.load(trust, cache=cache)] == [readers["portal"].certificate]
    shutil.copyfile(readers["central"].cert_path, kept / "staged")
    os.rename(kept / "staged", kept / "one.pem")
    assert [r.certificate for r in registry.load(trust, cache=cache, restat=False)] == [readers["central"].certificate]
