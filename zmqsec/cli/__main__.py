"""``python -m zmqsec.cli``: the same as the ``zmqsec`` command."""

import sys

from .main import main

sys.exit(main())
