"""The ``zmqsec`` command: one parser, subcommands registered by each layer.

``main(argv) -> int`` maps our error types to exit codes in one place:

====  ===========================================================
0     success
1     an operational error (bad file, bad configuration, I/O)
2     bad command-line usage (argparse)
3     a certificate or message was refused by validation
====  ===========================================================
"""

from __future__ import annotations

import argparse
import logging
import sys

from zmqsec import __version__
from zmqsec.errors import ZmqsecError
from zmqsec.keys.errors import CertificateRejected

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_REJECTED = 0, 1, 2, 3


def build_parser() -> argparse.ArgumentParser:
    """The whole command line: every layer's subcommands."""
    from zmqsec.tools import activemq, bench, demo

    from . import bridge, capture, keys, publish, relay, subscribe

    parser = argparse.ArgumentParser(prog="zmqsec", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"zmqsec {__version__}")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (keys, publish, subscribe, relay, capture, bridge, activemq, demo, bench):
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; the exit code says how it went (table above)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or usage error (2)
        return int(exc.code or 0)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except CertificateRejected as exc:
        print(f"zmqsec: refused [{exc.reason}]: {exc}", file=sys.stderr)
        return EXIT_REJECTED
    except ZmqsecError as exc:
        print(f"zmqsec: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


