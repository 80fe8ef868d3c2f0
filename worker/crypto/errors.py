"""Few, flat crypto errors. Every failure to open a ciphertext is the same opaque error."""

from __future__ import annotations

__all__ = ["InvalidCiphertext", "InvalidInput", "UnsupportedAlgorithm"]


class InvalidCiphertext(Exception):
    """A ciphertext, wrapped key or KEM ciphertext that does not open. Deliberately opaque."""


class InvalidInput(ValueError):
    """A well-formed request whose bytes have the wrong shape (e.g. length)."""


class UnsupportedAlgorithm(Exception):
    """No installed provider implements the algorithm."""
