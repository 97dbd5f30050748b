"""Exact and near-duplicate detection for the cleaning stage.

Exact duplicates: a 128-bit BLAKE2b digest of the normalised text.

Near duplicates: MinHash signatures of a document's character n-grams (its
shingles) in datasketch's ``affine32`` scheme, indexed in datasketch's
``MinHashLSH``. Signatures are computed for a whole batch with numpy (one
32-bit hash per shingle, then ``fmix32`` and the ``a * h + b`` permutations of
``datasketch.MinHash(num_perm, seed)``, minimum per document): the same values
``MinHash.update_batch`` gives for those shingle hashes, without a Python call
per shingle. A candidate from the index counts as a duplicate only if the
signatures agree on at least ``threshold`` of their positions (the MinHash
estimate of the Jaccard similarity), so band collisions do not drop documents.
Documents are offered in table order: the first of a group stays.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

_FMIX = (np.uint32(16), np.uint32(0x85EBCA6B), np.uint32(13), np.uint32(0xC2B2AE35))
_MIX = np.uint64(0x9E3779B97F4A7C15)
_BASE = np.uint64(0x100000001B3)
_BLOCK = 2048  # shingles per block of the (num_perm, block) permutation matrix


def text_digest(text: str) -> bytes:
    """The exact-duplicate key of a normalised text."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


def fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finalizer (datasketch's pre-mix of the ``affine32`` scheme)."""
    s1, m1, s2, m2 = _FMIX
    h = h ^ (h >> s1)
    h = h * m1
    h = h ^ (h >> s2)
    h = h * m2
    return h ^ (h >> s1)


def shingle_hashes(text: str, ngram: int) -> np.ndarray:
    """32-bit hashes (uint32) of the character n-grams of ``text``, line breaks as spaces.

    A text shorter than ``ngram`` is one shingle. The hash is a polynomial
    rolling hash over code points, folded to its high 32 bits: deterministic
    across runs and machines (no ``PYTHONHASHSEED``).
    """
    text = text.replace("\n", " ")
    cps = np.frombuffer(text.encode("utf-32-le", "replace"), dtype=np.uint32).astype(np.uint64)
    if len(cps) == 0:
        return np.zeros(0, dtype=np.uint32)
    k = min(ngram, len(cps))
    tokens = (cps + np.uint64(1)) * _MIX
    h = tokens[: len(tokens) - k + 1].copy()
    for j in range(1, k):
        h = h * _BASE + tokens[j : len(tokens) - k + 1 + j]
    h *= _MIX
    return (h >> np.uint64(32)).astype(np.uint32)


class NearDuplicateIndex:
    """MinHash LSH over character n-grams; ``add`` answers whether a text duplicates an earlier one.

    Args:
        num_perm: MinHash permutations (signature length).
        ngram: characters per shingle.
        threshold: Jaccard similarity (estimated) at and above which a text is
            a near duplicate.
        seed: seed of the permutations (datasketch's ``MinHash(seed=...)``).
    """

    def __init__(self, num_perm: int = 128, ngram: int = 5, threshold: float = 0.8, seed: int = 1):
        from datasketch import MinHash, MinHashLSH

        if not 0 < threshold <= 1:
            raise ValueError(f"threshold must be in (0, 1], got {threshold}")
        template = MinHash(num_perm=num_perm, seed=seed, scheme="affine32")
        a, b = template.permutations
        self.a = a.astype(np.uint32)[:, None]
        self.b = b.astype(np.uint32)[:, None]
        self.num_perm, self.ngram, self.threshold, self.seed = num_perm, ngram, threshold, seed
        self.lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        self._buf = np.empty((num_perm, _BLOCK), dtype=np.uint32)
        self._sigs: list[np.ndarray] = []
        self._keys: list[str] = []

    def signature(self, text: str) -> np.ndarray:
        """The MinHash signature (uint32, ``num_perm``) of ``text``'s shingles."""
        hv = fmix32(shingle_hashes(text, self.ngram))
        out = np.full(self.num_perm, np.iinfo(np.uint32).max, dtype=np.uint32)
        for start in range(0, len(hv), _BLOCK):
            x = hv[start : start + _BLOCK]
            block = self._buf[:, : len(x)]
            np.multiply(self.a, x, out=block)  # wraps mod 2**32, like datasketch
            block += self.b
            np.minimum(out, block.min(axis=1), out=out)
        return out

    def signatures(self, texts: Sequence[str]) -> np.ndarray:
        return np.stack([self.signature(t) for t in texts]) if texts else np.zeros((0, 0))

    def add(self, key: str, sig: np.ndarray) -> str | None:
        """Index ``sig`` under ``key`` unless it duplicates an indexed signature.

        Returns:
            ``None`` if ``key`` is new (and now indexed), else the key of the
            earliest indexed document it duplicates (``key`` is not indexed).
        """
        from datasketch import LeanMinHash

        m = LeanMinHash(seed=self.seed, hashvalues=sig, scheme="affine32")
        candidates = sorted(self.lsh.query(m))  # row numbers: the earliest first
        for row in candidates:
            if np.mean(self._sigs[row] == sig) >= self.threshold:
                return self._keys[row]
        row = len(self._sigs)
        self._sigs.append(sig)
        self._keys.append(key)
        self.lsh.insert(row, m, check_duplication=False)
        return None
