"""``zmqsec bench``: zmqsec measured beside the baselines a user would compare it with, in one run.

Five measurements on the same machine, each figure a median over repetitions and each
comparison a ratio of figures taken in the same run (docs/performance.md explains them):

* **stream** -- plain pyzmq PUB/SUB against a zmqsec ``Publisher``/``Subscriber``, with the
  publisher's journal off and on, publisher and reader in separate processes over tcp loopback:
  messages/s, MB/s, and the latency from ``publish()`` to the delivery of a verified message at a
  fixed rate;
* **replay** -- a reader (``zmqsec subscribe``) stopped while the stream goes on, then restarted:
  how fast it stores what it missed, replayed from the journal, and when it is live again;
* **rekey** -- revoking one of N readers: the publisher's rekey, the time until sampled readers
  hold the new key, and the bytes each reader must receive, single-envelope and grouped;
* **bridge** -- EMI S/MIME messages through ActiveMQ, both directions: the bridge's path (out: a
  receipted transaction per window; in: verified, stored, acknowledged) against one ``openssl smime``
  process per sign, encrypt, decrypt and verify (APEL SSM's way), the broker's own ceiling,
  cryptography's S/MIME builders beside the bridge's signing, and stomp-out under a steady input;
* **memory** -- peak RSS of a publisher holding many readers, and of a reader.
* **start** -- ``zmqsec publish`` started on 100,000 readers (quick: 2,500): time to its first epoch key
  and peak RSS, on every core and pinned to one.

Results go to a JSON file with PNG plots beside it (matplotlib: ``pip install 'zmqsec[tools]'``).

Modules: ``config`` (profiles, names), ``pki``, ``grouping``, ``systems`` and ``workers`` (the two
systems in processes of their own), one module per section (``stream``, ``replay``, ``rekey``,
``bridge`` with ``bridge_in``, ``bridge_steady``, ``broker`` and ``bridge_run``, which runs them,
``memory``, ``start``), ``report`` (results.json), ``plots``, and ``runner``, which runs the sections in turn.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .config import FULL, QUICK, SECTIONS, BenchConfig, BenchError, Profile

__all__ = ["FULL", "QUICK", "SECTIONS", "BenchConfig", "BenchError", "Profile", "cmd_bench", "register"]


def _broker_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"--broker {text!r} is not HOST:PORT (a STOMP port)")
    return host.strip("[]"), int(port)


def _sections(text: str) -> tuple[str, ...]:
    chosen = tuple(s.strip() for s in text.split(",") if s.strip())
    unknown = [s for s in chosen if s not in SECTIONS]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"--only takes a comma-separated subset of {','.join(SECTIONS)}")
    return chosen


def register(subparsers) -> None:
    """Add ``zmqsec bench`` to the command's subparsers."""
    p = subparsers.add_parser("bench", help="measure zmqsec beside plain pyzmq and the openssl-per-message bridge",
                              description=__doc__.splitlines()[0].replace("``", ""))
    p.add_argument("--quick", action="store_true", help="the quick profile (under 2 minutes; fewer readers and messages)")
    p.add_argument("--out", type=Path, default=Path("bench/results.json"),
                   help="results JSON; the PNG plots go beside it (default: bench/results.json)")
    p.add_argument("--broker", type=_broker_address, metavar="HOST:PORT",
                   help="STOMP port of an ActiveMQ to use (default: start a private one on free ports)")
    p.add_argument("--only", type=_sections, default=SECTIONS, metavar="SECTIONS",
                   help=f"comma-separated subset of {','.join(SECTIONS)}")
    p.add_argument("--group-size", type=int, metavar="N", help="grouped mode: readers per group (default: about sqrt(readers))")
    p.add_argument("--workdir", type=Path, help="keep certificates, broker data and outboxes here (default: a temporary directory)")
    p.add_argument("--no-plots", action="store_true", help="write the JSON only")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args) -> int:
    """Run the benchmark the options describe; tell stderr where the results are and which targets
    were missed (and, without matplotlib, in one more line, that the plots were skipped)."""
    # Imported here, not at the top: every spawned worker process imports this package, and the
    # bridges, STOMP and matplotlib have no place in the memory those workers measure.
    from . import plots
    from .runner import run

    if args.group_size is not None and args.group_size < 1:
        raise BenchError("--group-size must be 1 or more")
    skipped = None if args.no_plots else plots.unavailable()
    config = BenchConfig(profile=QUICK if args.quick else FULL, out=args.out, broker=args.broker, sections=args.only,
                         group_size=args.group_size, workdir=args.workdir.resolve() if args.workdir else None,
                         plots=not args.no_plots and skipped is None)
    results = run(config)
    missed = [t["target"] for t in results["targets"] if t["met"] is False]
    print(f"zmqsec bench ({config.profile.name}): {config.out} in {results['duration_s']:.0f} s; "
          + (f"targets missed: {'; '.join(missed)}" if missed else "every measured target met"), file=sys.stderr)
    if skipped:
        print(f"zmqsec bench: {skipped}", file=sys.stderr)
    return 0
