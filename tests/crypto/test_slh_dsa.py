"""SLH-DSA (FIPS 205) on the pqcrypto wheel, checked against an independent verifier.

``_fips205_verify`` below is written from FIPS 205 (Algorithms 2-4, 8, 16-17, 20, 25 and
the SHA2 instantiation of §11.2): a round-3 SPHINCS+ signature, or one that did not
encode ``M' = 0 ‖ |ctx| ‖ ctx ‖ M``, would not verify under it. Slow parameter sets
sign once each, and only with ``PQKMS_HEAVY_TESTS=1``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os

import pytest
from cryptography.exceptions import UnsupportedAlgorithm as CryptographyUnsupported
from cryptography.hazmat.primitives.serialization import load_der_public_key

from schemas.algorithms import Algorithm, HashAlgorithm
from worker.crypto import registry
from worker.crypto.errors import InvalidInput, UnsupportedAlgorithm

pytest.importorskip("pqcrypto", reason="SLH-DSA needs the optional pqcrypto wheel")

from worker.crypto.slh_dsa import PARAMETER_SETS, SlhDsa, SlhDsaKey, shutdown_pool

HEAVY = os.environ.get("PQKMS_HEAVY_TESTS") == "1"

# n, h, d, h', a, k, m (FIPS 205 Table 2)
_PARAMS = {
    Algorithm.SLH_DSA_SHA2_128S: (16, 63, 7, 9, 12, 14, 30),
    Algorithm.SLH_DSA_SHA2_128F: (16, 66, 22, 3, 6, 33, 34),
    Algorithm.SLH_DSA_SHA2_192S: (24, 63, 7, 9, 14, 17, 39),
    Algorithm.SLH_DSA_SHA2_256S: (32, 64, 8, 8, 14, 22, 47),
}


def _mgf1(hash_name: str, seed: bytes, length: int) -> bytes:
    out = b""
    counter = 0
    while len(out) < length:
        out += hashlib.new(hash_name, seed + counter.to_bytes(4, "big")).digest()
        counter += 1
    return out[:length]


def _base_2b(x: bytes, b: int, out_len: int) -> list[int]:
    i = bits = total = 0
    out = []
    for _ in range(out_len):
        while bits < b:
            total = (total << 8) + x[i]
            i += 1
            bits += 8
        bits -= b
        out.append((total >> bits) % (1 << b))
    return out


class _Adrs:
    def __init__(self) -> None:
        self.a = bytearray(32)

    def copy(self) -> _Adrs:
        other = _Adrs()
        other.a = bytearray(self.a)
        return other

    def _set(self, offset: int, size: int, value: int) -> None:
        self.a[offset:offset + size] = value.to_bytes(size, "big")

    def layer(self, v: int) -> None:
        self._set(0, 4, v)

    def tree(self, v: int) -> None:
        self._set(4, 12, v)

    def type_and_clear(self, t: int) -> None:
        self._set(16, 4, t)
        self.a[20:32] = bytes(12)

    def keypair(self, v: int) -> None:
        self._set(20, 4, v)

    def get_keypair(self) -> int:
        return int.from_bytes(self.a[20:24], "big")

    def chain(self, v: int) -> None:  # also the tree height
        self._set(24, 4, v)

    def hash(self, v: int) -> None:  # also the tree index
        self._set(28, 4, v)

    def get_index(self) -> int:
        return int.from_bytes(self.a[28:32], "big")

    def compressed(self) -> bytes:
        return bytes(self.a[3:4] + self.a[8:16] + self.a[19:20] + self.a[20:32])


def _fips205_verify(
    algorithm: Algorithm, pk: bytes, msg: bytes, sig: bytes, ctx: bytes = b""
) -> bool:
    n, h, d, hp, a, k, m = _PARAMS[algorithm]
    lgw, w, len1, len2 = 4, 16, 2 * n, 3
    wots_len = len1 + len2
    if len(sig) != (1 + k * (1 + a) + h + d * wots_len) * n or len(pk) != 2 * n:
        return False
    big, block = ("sha256", 64) if n == 16 else ("sha512", 128)
    seed, root = pk[:n], pk[n:]

    def f(adrs: _Adrs, x: bytes) -> bytes:
        return hashlib.sha256(seed + bytes(64 - n) + adrs.compressed() + x).digest()[:n]

    def ht(adrs: _Adrs, x: bytes) -> bytes:
        return hashlib.new(big, seed + bytes(block - n) + adrs.compressed() + x).digest()[:n]

    def climb(adrs: _Adrs, node: bytes, index: int, auth: list[bytes]) -> bytes:
        for j, sibling in enumerate(auth):
            adrs.chain(j + 1)
            if (index >> j) % 2 == 0:
                adrs.hash(adrs.get_index() // 2)
                node = ht(adrs, node + sibling)
            else:
                adrs.hash((adrs.get_index() - 1) // 2)
                node = ht(adrs, sibling + node)
        return node

    m_prime = b"\x00" + bytes([len(ctx)]) + ctx + msg
    r = sig[:n]
    digest = _mgf1(big, r + seed + hashlib.new(big, r + seed + root + m_prime).digest(), m)
    md_len, tree_len, leaf_len = (k * a + 7) // 8, (h - h // d + 7) // 8, (h // d + 7) // 8
    md = digest[:md_len]
    idx_tree = int.from_bytes(digest[md_len:md_len + tree_len], "big") % (1 << (h - h // d))
    idx_leaf = int.from_bytes(
        digest[md_len + tree_len:md_len + tree_len + leaf_len], "big") % (1 << (h // d))

    adrs = _Adrs()
    adrs.tree(idx_tree)
    adrs.type_and_clear(3)
    adrs.keypair(idx_leaf)
    fors = sig[n:n + k * (1 + a) * n]
    roots = b""
    for i, index in enumerate(_base_2b(md, a, k)):
        part = fors[i * (1 + a) * n:(i + 1) * (1 + a) * n]
        adrs.chain(0)
        adrs.hash(i * (1 << a) + index)
        auth = [part[(1 + j) * n:(2 + j) * n] for j in range(a)]
        roots += climb(adrs, f(adrs, part[:n]), index, auth)
    roots_adrs = adrs.copy()
    roots_adrs.type_and_clear(4)
    roots_adrs.keypair(adrs.get_keypair())
    node = ht(roots_adrs, roots)

    hypertree = sig[n + k * (1 + a) * n:]
    for layer in range(d):
        if layer:
            idx_leaf = idx_tree % (1 << hp)
            idx_tree >>= hp
        xmss = hypertree[layer * (wots_len + hp) * n:(layer + 1) * (wots_len + hp) * n]
        adrs = _Adrs()
        adrs.layer(layer)
        adrs.tree(idx_tree)
        adrs.type_and_clear(0)
        adrs.keypair(idx_leaf)
        digits = _base_2b(node, lgw, len1)
        checksum = sum(w - 1 - v for v in digits) << ((8 - (len2 * lgw) % 8) % 8)
        digits += _base_2b(checksum.to_bytes((len2 * lgw + 7) // 8, "big"), lgw, len2)
        ends = b""
        for i, digit in enumerate(digits):
            adrs.chain(i)
            x = xmss[i * n:(i + 1) * n]
            for step in range(digit, w - 1):
                adrs.hash(step)
                x = f(adrs, x)
            ends += x
        pk_adrs = adrs.copy()
        pk_adrs.type_and_clear(1)
        pk_adrs.keypair(adrs.get_keypair())
        adrs.type_and_clear(2)
        adrs.hash(idx_leaf)
        auth = [xmss[(wots_len + z) * n:(wots_len + z + 1) * n] for z in range(hp)]
        node = climb(adrs, ht(pk_adrs, ends), idx_leaf, auth)
    return hmac.compare_digest(node, root)


@pytest.fixture(scope="module", autouse=True)
def _stop_signing_pool() -> object:
    yield None
    shutdown_pool()


@pytest.fixture(scope="module")
def key_128f() -> SlhDsaKey:
    provider = SlhDsa(Algorithm.SLH_DSA_SHA2_128F)
    return provider.load(provider.generate_seed())


@pytest.mark.parametrize("context", [None, b"", b"tenant context"])
def test_128f_round_trip_is_fips205(key_128f: SlhDsaKey, context: bytes | None) -> None:
    signature = key_128f.sign(b"message", context)
    assert len(signature) == 17088
    assert key_128f.verify(signature, b"message", context)
    assert _fips205_verify(Algorithm.SLH_DSA_SHA2_128F, key_128f.public_raw, b"message",
                           signature, context or b"")
    assert not key_128f.verify(signature, b"other message", context)
    assert not key_128f.verify(signature, b"message", b"another context")


def test_128f_context_is_bound(key_128f: SlhDsaKey) -> None:
    signature = key_128f.sign(b"m", b"ctx")
    assert not key_128f.verify(signature, b"m")
    assert not _fips205_verify(Algorithm.SLH_DSA_SHA2_128F, key_128f.public_raw, b"m",
                               signature)


def test_128f_sign_async_uses_the_process_pool(key_128f: SlhDsaKey) -> None:
    async def never_in_thread(call: object) -> bytes:
        raise AssertionError("SLH-DSA must not sign in the crypto thread pool")

    signature = asyncio.run(key_128f.sign_async(b"m", None, never_in_thread))
    assert key_128f.verify(signature, b"m")


def test_wrong_signatures_are_false(key_128f: SlhDsaKey) -> None:
    signature = key_128f.sign(b"m")
    flipped = bytearray(signature)
    flipped[-1] ^= 1
    assert not key_128f.verify(bytes(flipped), b"m")
    assert not key_128f.verify(signature[:-1], b"m")
    assert not key_128f.verify(signature + b"\x00", b"m")
    assert not key_128f.verify(b"", b"m")
    assert not key_128f.verify(signature, b"m", b"c" * 256)
    other = SlhDsa(Algorithm.SLH_DSA_SHA2_128F)
    assert not other.load(other.generate_seed()).verify(signature, b"m")


def test_bad_requests_are_invalid_input(key_128f: SlhDsaKey) -> None:
    with pytest.raises(InvalidInput, match="at most 255"):
        key_128f.sign(b"m", b"c" * 256)
    with pytest.raises(InvalidInput, match="not supported"):
        key_128f.sign_hash(b"h" * 32, HashAlgorithm.SHA256)
    with pytest.raises(InvalidInput, match="not supported"):
        key_128f.verify_hash(b"s", b"h" * 32, HashAlgorithm.SHA256)
    with pytest.raises(InvalidInput, match="64 bytes"):
        SlhDsa(Algorithm.SLH_DSA_SHA2_128F).load(b"k" * 63)


@pytest.mark.parametrize("algorithm", list(PARAMETER_SETS))
def test_public_key_spki_parses(algorithm: Algorithm) -> None:
    params = PARAMETER_SETS[algorithm]
    provider = registry.signature_algorithm(algorithm)
    assert isinstance(provider, SlhDsa)
    seed = provider.generate_seed()
    key = provider.load(seed)
    assert len(seed) == provider.seed_size == 4 * params.n
    assert key.public_raw == seed[2 * params.n:]
    assert len(key.public_raw) == provider.public_key_size
    # cryptography parses the SPKI and names the OID, but has no SLH-DSA key type.
    with pytest.raises(CryptographyUnsupported, match=f"Unknown key type: {params.oid}$"):
        load_der_public_key(key.public_key_spki)
    arc = int(params.oid.rsplit(".", 1)[1])
    header = bytes([0x30, 11 + 2 + 2 * params.n + 3, 0x30, 0x0B, 0x06, 0x09]) + bytes.fromhex(
        "6086480165030403") + bytes([arc]) + bytes([0x03, 2 * params.n + 1, 0x00])
    assert key.public_key_spki == header + key.public_raw


@pytest.mark.skipif(not HEAVY, reason="slow parameter sets: set PQKMS_HEAVY_TESTS=1")
@pytest.mark.parametrize("algorithm", [Algorithm.SLH_DSA_SHA2_128S, Algorithm.SLH_DSA_SHA2_192S,
                                       Algorithm.SLH_DSA_SHA2_256S])
def test_slow_parameter_sets_sign_once(algorithm: Algorithm) -> None:
    provider = SlhDsa(algorithm)
    key = provider.load(provider.generate_seed())
    signature = key.sign(b"m", b"ctx")
    assert len(signature) == provider.signature_size
    assert key.verify(signature, b"m", b"ctx")
    assert _fips205_verify(algorithm, key.public_raw, b"m", signature, b"ctx")


def test_refusal_names_the_extra_when_pqcrypto_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    signatures = {a: p for a, p in registry._SIGNATURE.items() if a not in PARAMETER_SETS}
    monkeypatch.setattr(registry, "_SIGNATURE", signatures)
    monkeypatch.setattr(registry, "_UNAVAILABLE",
                        dict.fromkeys(PARAMETER_SETS, registry._SLH_DSA_MISSING))
    with pytest.raises(UnsupportedAlgorithm, match=r"pip install 'pqkms\[slh-dsa\]'"):
        registry.signature_algorithm(Algorithm.SLH_DSA_SHA2_128F)
