"""Between the device and the wire: ``base`` (the Codec contract), ``plain`` (no
encryption), ``offload`` (the tund-to-tund offload extension over any codec) with
``chunks`` (super-packets cut to MTU-sized chunks and rebuilt). WireGuard is
:mod:`tund.relay.wireguard`."""
