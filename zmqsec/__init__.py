"""zmqsec: accounting streams encrypted once, readable only by authorized certificates.

See docs/PROTOCOL.md for the wire format and README.md for the commands.
"""

from keys.errors import ZmqsecError

__version__ = "0.1.0"
__all__ = ["ZmqsecError", "__version__"]

from .publisher import Publisher  # noqa: E402
from .receiver import Delivered  # noqa: E402
from .sender import RotationPolicy  # noqa: E402
from .subscriber import AsyncSubscriber, Subscriber  # noqa: E402

__all__ += ["Publisher", "Subscriber", "AsyncSubscriber", "RotationPolicy", "Delivered"]
