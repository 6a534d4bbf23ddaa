"""Options shared by several commands, and the settings every daemon builds the same way."""

from __future__ import annotations

from zmqsec.drivers.journal import DEFAULT_MAX_AGE, DEFAULT_MAX_BYTES, Journal
from zmqsec.errors import ConfigError
from zmqsec.keys.dn import DnAllowList
from zmqsec.keys.pemfiles import Credential
from zmqsec.keys.trust import CrlPolicy
from zmqsec.machines.subscriptions import MAX_SUBSCRIPTIONS_PER_CONNECTION

from .config import Option

STATUS = [
    Option("status", "status_file", "path", help="JSON status written every status interval and at exit"),
    Option("status", "status_interval", "float", 10.0, "seconds between status updates"),
]
COMMON = [
    Option("stream", "name", required=True, help="stream name (the ZeroMQ topic prefix)", flag_name="stream"),
    Option("certificates", "certificate", "path", required=True, help="our certificate (PEM)"),
    Option("certificates", "key", "path", required=True, help="our private key (PEM, mode 0600)"),
    Option("certificates", "capath", "path", required=True, help="hashed CA directory, e.g. /etc/grid-security/certificates"),
    Option("certificates", "crl", "choice", "require", "CRL checking", choices=tuple(c.value for c in CrlPolicy)),
    *STATUS,
]
CURVE_SERVER = [  # a daemon that binds (publisher, stomp-in's stream)
    Option("curve", "secret_key", "path", help="CurveZMQ: our NAME.key_secret (zmqsec curve-keygen); tcp links are then "
           "encrypted and authenticated per link", flag_name="curve_secret_key"),
    Option("curve", "clients", "path", help="CurveZMQ: directory of the NAME.key files of the only clients allowed to "
           "connect (default: any client that knows our public key)", flag_name="curve_clients"),
]
CURVE_CLIENT = [  # a daemon that connects (reader, stomp-out)
    Option("curve", "server_key", "path", help="CurveZMQ: the publisher's (or relay's) public NAME.key; enables CURVE "
           "on our connections", flag_name="curve_server_key"),
    Option("curve", "secret_key", "path", help="CurveZMQ: our own NAME.key_secret, when the server admits named "
           "clients only (default: a fresh key pair per run)", flag_name="curve_secret_key"),
]


def max_subscriptions(section: str) -> Option:
    """``[SECTION] max_subscriptions_per_connection`` of a daemon whose XPUB takes subscriptions."""
    return Option(section, "max_subscriptions_per_connection", "int", MAX_SUBSCRIPTIONS_PER_CONNECTION,
                  "distinct subscriptions one connection may hold; a connection that sends more is closed "
                  "(docs/PROTOCOL.md §9.1)")


def subscription_limit(settings, section: str) -> int:
    """The validated ``[SECTION] max_subscriptions_per_connection``."""
    limit = settings[f"{section}.max_subscriptions_per_connection"]
    if limit < 1:
        raise ConfigError(f"{settings.source}: [{section}] max_subscriptions_per_connection must be at least 1")
    return limit


def journal_options(what: str, path_help: str) -> list[Option]:
    """``[journal] path/max_age/max_bytes`` and ``[replay] endpoint`` (``--journal``, ``--replay-endpoint``) of a
    daemon that keeps ``what`` (the publisher's journal, a relay's archive)."""
    return [
        Option("journal", "path", "path", help=path_help, flag_name="journal"),
        Option("journal", "max_age", "float", DEFAULT_MAX_AGE, f"seconds the {what} keeps a frame",
               flag_name="journal_max_age"),
        Option("journal", "max_bytes", "int", DEFAULT_MAX_BYTES, f"bytes the {what} may hold",
               flag_name="journal_max_bytes"),
        Option("replay", "endpoint", "list", help=f"endpoint to bind for replay of the {what} (repeatable)",
               flag_name="replay_endpoint"),
    ]


def journal(settings, what: str) -> Journal | None:
    """The journal the settings name (None without ``[journal] path``); a replay endpoint needs one."""
    opened = (Journal(settings["journal.path"], max_age=settings["journal.max_age"],
                      max_bytes=settings["journal.max_bytes"]) if settings["journal.path"] else None)
    if settings["replay.endpoint"] and opened is None:
        raise ConfigError(f"[replay] endpoint serves the {what}: set [journal] path (--journal DIR) too")
    return opened


def credential(settings) -> Credential:
    """Our certificate and key, from ``[certificates]``."""
    return Credential.load(settings["certificates.certificate"], settings["certificates.key"])


def publishers(settings, section: str) -> DnAllowList:
    """Who may publish the stream: a reader must know it; "any certificate the CAs vouch for" is no answer."""
    allowed = DnAllowList.combine(settings[f"{section}.dn"] or (), settings[f"{section}.dn_list"])
    if not allowed.dns:
        raise ConfigError(f"[{section}] dn or dn_list is required: the DN(s) of the stream's publisher "
                                 "(--publisher-dn '/O=../CN=..')")
    return allowed
