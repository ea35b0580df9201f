"""Loaded at start-up by processes of the rolling-upgrade test (on their PYTHONPATH)
to make them the next, protocol-compatible release: a new version string, and one
header field appended to every message they send, as a release that adds a field
to a message would. Older peers must ignore the field; this release must still
read messages from older peers that lack it."""

import msgpack

import cluster.contract.version
from cluster.contract import wire

cluster.contract.version.__version__ = cluster.contract.version.__version__ + "+next"
_encode = wire.Message.encode


def _encode_with_a_new_field(self):
    header, *frames = _encode(self)
    fields = msgpack.unpackb(header, raw=False)
    return [msgpack.packb([*fields, {"added_in": "next"}], use_bin_type=True), *frames]


wire.Message.encode = _encode_with_a_new_field
