"""WireGuard for tund: sans-IO handshake, cookies, sessions and the relay codec.

Modules: :mod:`.primitives` (HASH/MAC/HMAC/KDF, AEAD, XAEAD, X25519, TAI64N),
:mod:`.messages` (wire layouts), :mod:`.noise` (IKpsk2), :mod:`.cookie` (mac1/mac2,
cookie replies, load detection), :mod:`.replay` (sliding window), :mod:`.timers`
(protocol constants), :mod:`.session` (keypairs), :mod:`.codec` (:class:`WireGuardCodec`).
"""
