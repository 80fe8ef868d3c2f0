"""SubjectPublicKeyInfo DER for algorithms OpenSSL does not know yet (X-Wing, composites).

Both drafts use the simplest form: ``SEQUENCE { SEQUENCE { OID } , BIT STRING }`` with
the parameters absent and the raw public key as the bit string's content.
"""

from __future__ import annotations

__all__ = ["encode_oid", "encode_spki"]


def _length(size: int) -> bytes:
    if size < 0x80:
        return bytes([size])
    raw = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def _tlv(tag: int, content: bytes) -> bytes:
    return bytes([tag]) + _length(len(content)) + content


def encode_oid(dotted: str) -> bytes:
    """DER of an OBJECT IDENTIFIER given in dotted form (tag and length included)."""
    arcs = [int(part) for part in dotted.split(".")]
    if len(arcs) < 2 or arcs[0] > 2:
        raise ValueError(f"not an OID: {dotted}")
    body = bytearray([40 * arcs[0] + arcs[1]])
    for arc in arcs[2:]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        body.extend(reversed(chunk))
    return _tlv(0x06, bytes(body))


def encode_spki(oid: str, public_key: bytes) -> bytes:
    """SPKI DER: AlgorithmIdentifier with absent parameters, the raw key as BIT STRING."""
    algorithm = _tlv(0x30, encode_oid(oid))
    bit_string = _tlv(0x03, b"\x00" + public_key)  # 0 unused bits
    return _tlv(0x30, algorithm + bit_string)
