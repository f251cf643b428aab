"""The device end: ``tun`` (the tun/tap fd: batched reads, writes), ``offload``
(TUNSETOFFLOAD), ``coalesce`` (TCP segments written back as one super-frame)."""
