"""The relay worker's own error (see the tree in :mod:`tund.errors`)."""

from __future__ import annotations

from tund.errors import ErrorCode, TundError


class RelayError(TundError):
    """A worker cannot go on: bad start message, unusable fd, missing codec, dead device."""

    code = ErrorCode.RELAY
