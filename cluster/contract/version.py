"""One version source for the package and the wire protocol."""

__version__ = "0.1.0"

# Bumped whenever a message layout changes; peers with another value are refused.
PROTOCOL_VERSION = 1
