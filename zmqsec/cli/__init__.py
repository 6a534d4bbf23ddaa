"""The ``zmqsec`` command: thin subcommands over the library, one config loader."""


def main(argv: list[str] | None = None) -> int:
    """Run the ``zmqsec`` command with ``argv``; returns the exit code (see :mod:`zmqsec.cli.main`)."""
    from .main import main as run

    return run(argv)
