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

from keys import cli as keys_cli
from keys.errors import CertificateRejected, ZmqsecError

from . import __version__

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_REJECTED = 0, 1, 2, 3


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zmqsec", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"zmqsec {__version__}")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    keys_cli.register(sub)
    from bridges import activemq
    from bridges import cli as bridges_cli

    from . import bench, demo, stream_cli

    stream_cli.register(sub)
    bridges_cli.register(sub)
    activemq.register(sub)
    demo.register(sub)
    bench.register(sub, _bridge_parts())
    return parser


def _bridge_parts():
    """The bridge's classes for ``zmqsec bench``: the stream package may not import the bridges,
    so this top layer hands them in."""
    from bridges import activemq, outbox, stomp_out, stomplink

    from .bench import BridgeParts

    return BridgeParts(broker_config=activemq.BrokerConfig, local_broker=activemq.LocalBroker,
                       broker_settings=stomplink.BrokerSettings, stomp_link=stomplink.StompLink,
                       outbox=outbox.Outbox, out_settings=stomp_out.OutSettings, out_bridge=stomp_out.StompOutBridge)


def main(argv: list[str] | None = None) -> int:
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


if __name__ == "__main__":
    sys.exit(main())
