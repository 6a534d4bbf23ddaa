"""docs/deploy cannot rot: its configs load, its units start commands that exist and may write what
their configs write, and its quick start makes exactly the certificates, registry and keys the configs name.

Nothing here opens a socket or starts a daemon: configs go through the one loader, units are parsed,
and the quick start's ``zmqsec`` commands run in-process in a temporary directory standing in for ``/``.
"""

from __future__ import annotations

import argparse
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath

import pytest

from kit.paths import DEPLOY
from zmqsec.cli.bridge import IN, OUT, cmd_stomp_in, cmd_stomp_out
from zmqsec.keys.dn import slash_dn
from zmqsec.keys.pemfiles import Credential, load_certificate
from zmqsec.keys.registry import ReaderRegistry, fingerprint
from zmqsec.keys.trust import TrustStore, Usage
from zmqsec.cli import config
from zmqsec.drivers import curve
from zmqsec.cli.main import build_parser, main
from zmqsec.cli.publish import PUBLISH, cmd_publish
from zmqsec.cli.relay import RELAY, cmd_relay
from zmqsec.cli.subscribe import SUBSCRIBE, cmd_subscribe

GUIDE = (DEPLOY / "README.md").read_text()
SCHEMAS = {"publisher.ini": PUBLISH, "reader.ini": SUBSCRIBE, "relay.ini": RELAY, "relay-multicast.ini": RELAY,
           "bridge-out.ini": OUT, "bridge-in.ini": IN}
SCHEMA_OF_COMMAND = {cmd_publish: PUBLISH, cmd_subscribe: SUBSCRIBE, cmd_relay: RELAY, cmd_stomp_out: OUT, cmd_stomp_in: IN}
# The endpoints a command binds (an ipc:// one creates a socket file); the others only connect.
BINDS = {"publisher.endpoint", "relay.output"}
UNITS = sorted(DEPLOY.glob("*.service"))
INSTALLED_AT = "/etc/zmqsec/"  # where step 5 of the guide copies the configs
DISABLED = re.compile(r"^;(?=\w+ = \S)", re.M)  # ";name = value": an option the operator may switch on


def _load(schema, text: str, tmp_path: Path, name: str = "example.ini") -> config.Settings:
    path = tmp_path / name
    path.write_text(text)
    parser = argparse.ArgumentParser()
    config.add_flags(parser, schema)
    return config.load(schema, parser.parse_args(["--config", str(path)]))


def _enabled(text: str) -> str:
    """The config with every ';' option switched on."""
    return DISABLED.sub("", text)


# -- the configs -----------------------------------------------------------------------------


def test_every_example_config_is_checked():
    assert {p.name for p in DEPLOY.glob("*.ini")} == set(SCHEMAS)


@pytest.mark.parametrize("name", sorted(SCHEMAS))
@pytest.mark.parametrize("variant", ["as-shipped", "every-option-on"])
def test_example_config_loads(name, variant, tmp_path):
    text = (DEPLOY / name).read_text()
    assert text.startswith(f"# {INSTALLED_AT}{name} "), "the first line names where the file is installed"
    stray = [line for line in text.splitlines() if line.startswith(";") and not DISABLED.match(line)]
    assert not stray, f"';' marks options only; explain with '#': {stray}"
    settings = _load(SCHEMAS[name], text if variant == "as-shipped" else _enabled(text), tmp_path, name)
    for key, value in settings.items():
        assert not (isinstance(value, str) and "#" in value), f"{key} swallowed a comment: {value!r}"


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_curve_options_name_the_files_curve_keygen_writes(name, tmp_path):
    settings = _load(SCHEMAS[name], _enabled((DEPLOY / name).read_text()), tmp_path)
    for key, value in settings.items():
        if not key.startswith("curve.") or value is None:
            continue
        if key.endswith("secret_key"):
            assert value.name.endswith(".key_secret"), f"[curve] {key}: our key pair is NAME.key_secret"
        elif key.endswith("server_key"):
            assert value.suffix == ".key", f"[curve] {key}: the server's public key is NAME.key"
        else:
            assert "." not in value.name, f"[curve] {key}: a directory of NAME.key files"


def test_group_size_is_documented_for_large_registries(tmp_path):
    settings = _load(PUBLISH, (DEPLOY / "publisher.ini").read_text(), tmp_path)
    assert settings["rotation.group_size"] == 0
    assert "group_size = 128" in (DEPLOY / "publisher.ini").read_text()


# -- the units -------------------------------------------------------------------------------


def _unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """A systemd unit as {section: {key: [values]}}; a key may repeat, comments are skipped."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def _command(unit: Path, instance: str = "INSTANCE") -> tuple[list[str], argparse.Namespace]:
    service = _unit(unit)["Service"]
    assert len(service.get("ExecStart", [])) == 1, f"{unit.name}: one ExecStart"
    argv = shlex.split(service["ExecStart"][0].replace("%i", instance))
    assert argv[0].startswith("/") and PurePosixPath(argv[0]).name == "zmqsec", f"{unit.name}: {argv[0]}"
    try:
        args = build_parser().parse_args(argv[1:])
    except SystemExit:
        pytest.fail(f"{unit.name}: `{shlex.join(argv[1:])}` is not a zmqsec command line", pytrace=False)
    return argv, args


def _configs(unit: Path) -> list[str]:
    """The example configs a unit runs: the one it names, or for a template every example its command takes."""
    _, args = _command(unit)
    if getattr(args, "config", None) is None:
        return []
    if "%i" not in _unit(unit)["Service"]["ExecStart"][0]:
        return [PurePosixPath(str(args.config)).name]
    schema = SCHEMA_OF_COMMAND[args.func]
    return sorted(name for name, s in SCHEMAS.items() if s is schema)


# Units that run a daemon on a config (the others run one-shot commands); decided without parsing the
# command line, so that a broken unit fails its tests instead of the collection.
DAEMONS = [u for u in UNITS if "--config" in _unit(u).get("Service", {}).get("ExecStart", [""])[0]]


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_unit_starts_an_existing_subcommand(unit):
    argv, args = _command(unit)
    assert callable(getattr(args, "func", None)), f"{unit.name}: {shlex.join(argv[1:])} runs nothing"


@pytest.mark.parametrize("unit", DAEMONS, ids=lambda p: p.name)
def test_daemon_unit_runs_an_example_config_with_the_options_of_its_command(unit):
    names = _configs(unit)
    assert names, f"{unit.name}: docs/deploy has no config for it"
    for name in names:
        _, args = _command(unit, instance=name.removesuffix(".ini"))
        assert str(args.config) == INSTALLED_AT + name, f"{unit.name}: --config {args.config}"
        assert name in SCHEMAS, f"{unit.name} runs {name}, which docs/deploy does not have"
        assert SCHEMAS[name] is SCHEMA_OF_COMMAND[args.func], f"{unit.name} would load {name} with another command's options"


def test_every_example_config_has_a_unit():
    assert {name for u in DAEMONS for name in _configs(u)} == set(SCHEMAS)


def test_timer_starts_its_service():
    for timer in DEPLOY.glob("*.timer"):
        assert timer.with_suffix(".service").exists()


@pytest.mark.parametrize("unit", DAEMONS, ids=lambda p: p.name)
def test_daemon_unit_is_unprivileged_and_hardened(unit):
    service = _unit(unit)["Service"]
    want = {"User": ["zmqsec"], "NoNewPrivileges": ["yes"], "ProtectSystem": ["strict"], "ProtectHome": ["yes"],
            "PrivateTmp": ["yes"], "CapabilityBoundingSet": [""], "Restart": ["on-failure"]}
    assert {k: service.get(k) for k in want} == want


def _writable(service: dict[str, list[str]]) -> list[PurePosixPath]:
    roots = [PurePosixPath(p.lstrip("-+")) for line in service.get("ReadWritePaths", []) for p in line.split()]
    roots += [PurePosixPath("/run", d) for line in service.get("RuntimeDirectory", []) for d in line.split()]
    roots += [PurePosixPath("/var/lib", d) for line in service.get("StateDirectory", []) for d in line.split()]
    return roots


def _written(settings: config.Settings) -> list[PurePosixPath]:
    """What a daemon creates or changes: its queues, the outbox and the lock file beside it, the status
    file (replaced through a temporary file beside it), the socket file of an ipc:// endpoint it binds."""
    paths = [settings.get(k) for k in ("messaging.path", "messaging.reject_path", "messaging.outbox", "status.status_file",
                                       "journal.path", "subscriber.state", "stream.state")]
    paths = [PurePosixPath(p) for p in paths if p is not None]
    # the defaults beside a spool: refused outgoing items, a reader's or a bridge's position
    if "messaging.spool" in settings and settings.get("messaging.path") and not settings.get("messaging.reject_path"):
        paths.append(PurePosixPath(f"{settings['messaging.path']}.reject"))
    if "subscriber.state" in settings and settings.get("messaging.path") and not settings.get("subscriber.state"):
        paths.append(PurePosixPath(f"{settings['messaging.path']}.state.json"))
    if "stream.state" in settings and settings.get("messaging.outbox") and not settings.get("stream.state"):
        paths.append(PurePosixPath(f"{settings['messaging.outbox']}.state.json"))
    if settings.get("messaging.outbox") is not None:
        outbox = PurePosixPath(settings["messaging.outbox"])
        paths.append(outbox.with_name(outbox.name + ".lock"))
    binds = BINDS | ({"stream.endpoint"} if "stream.registry" in settings else set())  # stomp-in republishing
    for key in binds:
        paths += [PurePosixPath(e.removeprefix("ipc://")) for e in settings.get(key) or () if e.startswith("ipc://")]
    return paths


@pytest.mark.parametrize("unit", DAEMONS, ids=lambda p: p.name)
def test_daemon_unit_may_write_what_its_configs_write(unit, tmp_path):
    """ProtectSystem=strict makes everything else read-only: a spool missing from ReadWritePaths= fails at run time."""
    roots = _writable(_unit(unit)["Service"])
    for name in _configs(unit):
        settings = _load(SCHEMAS[name], _enabled((DEPLOY / name).read_text()), tmp_path)
        for path in _written(settings):
            assert any(path.is_relative_to(root) for root in roots), \
                f"{unit.name} runs {name}, which writes {path}: add it to ReadWritePaths= (now {[str(r) for r in roots]})"


def test_units_pass_systemd_analyze_verify(tmp_path):
    analyze = shutil.which("systemd-analyze")
    zmqsec = Path(sys.executable).with_name("zmqsec")
    if analyze is None or not zmqsec.exists():
        pytest.skip("needs systemd-analyze and the zmqsec entry point")
    names = []
    for path in [*UNITS, *DEPLOY.glob("*.timer")]:
        text = path.read_text().replace("/opt/zmqsec/bin/zmqsec", str(zmqsec))  # verify wants the program to exist
        (tmp_path / path.name).write_text(text)
        if "@." in path.name:  # a template: verify each instance the examples have
            names += [f"./{path.name.replace('@.', '@' + c.removesuffix('.ini') + '.')}" for c in _configs(path)]
        else:
            names.append(f"./{path.name}")
    result = subprocess.run([analyze, "verify", *names], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    complaints = (result.stdout + result.stderr).strip()
    if result.returncode != 0 or complaints:
        pytest.fail(f"systemd-analyze verify (exit {result.returncode}):\n{complaints}")


# -- the quick start -------------------------------------------------------------------------

LINK = "ln -s /etc/zmqsec/ca/certificates /etc/grid-security/certificates"


def _guide_commands() -> list[list[str]]:
    """The ``zmqsec`` command lines of the guide's ```sh blocks (the ```console blocks need root or a running system)."""
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", GUIDE, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            argv = shlex.split(line, comments=True)
            if argv and argv[0] == "zmqsec":
                commands.append(argv)
    return commands


def _rooted(root: Path, text: str) -> str:
    """Absolute /etc, /var and /run paths in ``text`` moved under ``root``."""
    return re.sub(r"(?<![\w/])/(etc|var|run)/", lambda m: f"{root}/{m.group(1)}/", text)


@pytest.fixture(scope="module")
def quick_start(tmp_path_factory):
    """Steps 2 to 4 of the guide, run as written under a temporary root.

    Returns the root and the configs loaded from it: as shipped, and with every ';' option switched on."""
    root = tmp_path_factory.mktemp("root")
    assert LINK in GUIDE
    (root / "etc" / "grid-security").mkdir(parents=True)
    (root / "etc" / "grid-security" / "certificates").symlink_to(root / "etc" / "zmqsec" / "ca" / "certificates")
    commands = _guide_commands()
    assert commands, "the guide's ```sh blocks hold the zmqsec commands of steps 2 to 4"
    for argv in commands:
        code = main([_rooted(root, a) for a in argv[1:]])
        assert code == 0, f"step failed ({code}): {shlex.join(argv)}"
    configs = {name: _load(schema, _rooted(root, (DEPLOY / name).read_text()), root, name) for name, schema in SCHEMAS.items()}
    enabled = {name: _load(schema, _rooted(root, _enabled((DEPLOY / name).read_text())), root, name)
               for name, schema in SCHEMAS.items()}
    return root, configs, enabled


# What each command does with its certificate: publishers and bridges sign; readers and stomp-in decrypt.
USAGES = {"publisher.ini": [Usage.SIGN], "reader.ini": [Usage.ENCRYPT], "bridge-out.ini": [Usage.SIGN, Usage.ENCRYPT],
          "bridge-in.ini": [Usage.ENCRYPT]}


@pytest.mark.parametrize("name", sorted(USAGES))
def test_configs_name_a_certificate_the_quick_start_issues_for_their_role(quick_start, name):
    _, configs, _ = quick_start
    settings = configs[name]
    credential = Credential.load(settings["certificates.certificate"], settings["certificates.key"])
    trust = TrustStore.from_directory(settings["certificates.capath"])
    for usage in USAGES[name]:
        trust.validate(credential.certificate, usage=usage)


def test_readers_name_the_publisher_the_quick_start_issues(quick_start):
    _, configs, _ = quick_start
    publisher = load_certificate(configs["publisher.ini"]["certificates.certificate"])
    assert configs["reader.ini"]["publishers.dn"] == (slash_dn(publisher.subject),)
    assert configs["bridge-out.ini"]["stream.dn"] == (slash_dn(publisher.subject),)


def test_the_registry_authorizes_the_reader_and_the_bridge(quick_start):
    _, configs, _ = quick_start
    publisher = configs["publisher.ini"]
    readers = ReaderRegistry(publisher["readers.registry"]).load(TrustStore.from_directory(publisher["certificates.capath"]))
    for name in ("reader.ini", "bridge-out.ini"):
        assert fingerprint(load_certificate(configs[name]["certificates.certificate"])) in readers.fingerprints


def test_stomp_out_encrypts_to_the_certificate_stomp_in_decrypts_with(quick_start):
    _, configs, _ = quick_start
    assert configs["bridge-out.ini"]["encryption.server_cert"] == configs["bridge-in.ini"]["certificates.certificate"]


def test_curve_options_name_the_keys_the_quick_start_makes(quick_start):
    root, _, enabled = quick_start
    publisher, reader = enabled["publisher.ini"], enabled["reader.ini"]
    server_public, _ = curve.load_secret(publisher["curve.secret_key"])
    assert curve.load_public(reader["curve.server_key"]) == server_public, "the reader must trust the publisher's key"
    client_public, _ = curve.load_secret(reader["curve.secret_key"])
    # Step 4 copies the reader's public key into the publisher's clients directory.
    reader_public = reader["curve.secret_key"].with_suffix(".key")
    assert curve.load_public(reader_public) == client_public
    assert f"cp {reader_public} {publisher['curve.clients']}/" in _rooted(root, GUIDE)
