"""zmqsec: accounting streams encrypted once, readable only by authorized certificates.

See docs/PROTOCOL.md for the wire format and README.md for the commands.
"""

from keys.errors import ZmqsecError

__version__ = "0.1.0"
__all__ = ["ZmqsecError", "__version__"]
