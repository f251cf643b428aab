"""QR codes of client configs (``--qr``), made with segno (no dependencies; Debian
python3-segno). Imported only when a QR code is asked for."""

from __future__ import annotations

import io

import segno


def make(text: str) -> segno.QRCode:
    """A QR code holding exactly ``text`` (UTF-8 bytes, error correction L, not a micro QR:
    what the WireGuard apps scan)."""
    return segno.make(text.encode("utf-8"), error="l", micro=False, mode="byte")


def terminal(text: str) -> str:
    """``text`` as a QR code drawn with block characters, for a terminal."""
    buf = io.StringIO()
    make(text).terminal(out=buf, compact=True)
    return buf.getvalue()


def save_png(text: str, path: str, scale: int = 4) -> None:
    make(text).save(path, kind="png", scale=scale, border=4)
