"""The network end: ``base`` (the Transport and Link contracts, resolve, backoff),
``udp`` (one message per datagram) with ``gso`` (UDP_SEGMENT/UDP_GRO) beside it, ``tcp``
with ``framing`` (simpletun's 2-byte length prefix)."""
