"""Exact and near-duplicate detection for the cleaning stage, in memory flat in corpus size.

Exact duplicates: a 128-bit BLAKE2b digest of the normalised text.

Near duplicates: MinHash signatures of a document's character n-grams (its
shingles) in datasketch's ``affine32`` scheme, computed for a whole document
with numpy (one 32-bit hash per shingle, then ``fmix32`` and the ``a * h + b``
permutations of ``datasketch.MinHash(num_perm, seed)``, minimum per
permutation): the same values ``MinHash.update_batch`` gives for those shingle
hashes, without a Python call per shingle. Signatures are cut into ``bands``
bands of ``rows`` values (LSH); documents that agree on a whole band are
candidates, and a candidate pair counts as a duplicate only if the signatures
agree on at least ``threshold`` of their positions (the MinHash estimate of the
Jaccard similarity), so band collisions do not drop documents.

``DuplicateFinder`` keeps nothing per document in memory while the corpus
streams through: digests, signatures and band hashes go to files in a work
folder. ``find`` then sorts one key column at a time (exact digests, then each
band), verifies the candidate pairs against the signatures on disk and joins
verified pairs into groups (connected components, as datatrove's MinHash
clustering does). The first document of a group, in table order, stays; every
other member is a duplicate of it.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_FMIX = (np.uint32(16), np.uint32(0x85EBCA6B), np.uint32(13), np.uint32(0xC2B2AE35))
_MIX = np.uint64(0x9E3779B97F4A7C15)
_BASE = np.uint64(0x100000001B3)
_BLOCK = 2048  # shingles per block of the (num_perm, block) permutation matrix
_PAIR_CHUNK = 1 << 16  # candidate pairs verified per read of the signature file

EXACT, NEAR = 1, 2  # reason codes of Duplicates.reason


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


def _candidate_probability(s: np.ndarray, bands: int, rows: int) -> np.ndarray:
    return 1.0 - (1.0 - s**rows) ** bands


def lsh_params(threshold: float, num_perm: int) -> tuple[int, int]:
    """``(bands, rows)`` with ``bands * rows <= num_perm`` minimising missed + spurious candidates.

    The criterion of datasketch's ``MinHashLSH``: the probability mass of
    pairs below ``threshold`` that become candidates plus that of pairs above
    it that do not, weighted equally (integrated over a uniform similarity).
    """
    below = np.linspace(0.0, threshold, 201)
    above = np.linspace(threshold, 1.0, 201)
    best, best_err = (1, 1), math.inf
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            fp = np.trapezoid(_candidate_probability(below, b, r), below)
            fn = np.trapezoid(1.0 - _candidate_probability(above, b, r), above)
            if fp + fn < best_err:
                best, best_err = (b, r), fp + fn
    return best


class MinHasher:
    """MinHash signatures of character n-grams, equal to datasketch's ``affine32`` MinHash."""

    def __init__(self, num_perm: int = 128, ngram: int = 5, seed: int = 1):
        from datasketch import MinHash

        a, b = MinHash(num_perm=num_perm, seed=seed, scheme="affine32").permutations
        self.a = a.astype(np.uint32)[:, None]
        self.b = b.astype(np.uint32)[:, None]
        self.num_perm, self.ngram, self.seed = num_perm, ngram, seed
        self._buf = np.empty((num_perm, _BLOCK), dtype=np.uint32)

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
        """Signatures of ``texts``, shape ``(len(texts), num_perm)``."""
        out = np.empty((len(texts), self.num_perm), dtype=np.uint32)
        for i, text in enumerate(texts):
            out[i] = self.signature(text)
        return out


def band_hashes(sigs: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """One 64-bit hash per band of ``rows`` signature values: shape ``(n, bands)``, uint64."""
    sigs = sigs.astype(np.uint64)
    out = np.empty((len(sigs), bands), dtype=np.uint64)
    for b in range(bands):
        h = np.full(len(sigs), np.uint64(0xCBF29CE484222325) + np.uint64(b), dtype=np.uint64)
        for v in sigs[:, b * rows : (b + 1) * rows].T:
            h ^= v
            h *= _BASE
            h ^= h >> np.uint64(29)
        out[:, b] = h
    return out


@dataclass
class Duplicates:
    """The duplicates ``DuplicateFinder.find`` found, sorted by row.

    ``rows[i]`` is a duplicate (reason ``EXACT`` or ``NEAR``) of the kept row ``first[i]``.
    """

    rows: np.ndarray
    reason: np.ndarray
    first: np.ndarray

    def lookup(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(reason, first)`` for each of ``rows``: reason 0 and first -1 where kept."""
        reason = np.zeros(len(rows), dtype=np.uint8)
        first = np.full(len(rows), -1, dtype=np.int64)
        if len(self.rows):
            pos = np.searchsorted(self.rows, rows).clip(max=len(self.rows) - 1)
            hit = self.rows[pos] == rows
            reason[hit] = self.reason[pos[hit]]
            first[hit] = self.first[pos[hit]]
        return reason, first


def _run_starts(sorted_keys: np.ndarray) -> np.ndarray:
    """Boolean: where a new run of equal keys starts in a sorted array (rows of 2-D keys)."""
    if sorted_keys.ndim == 1:
        diff = sorted_keys[1:] != sorted_keys[:-1]
    else:
        diff = np.any(sorted_keys[1:] != sorted_keys[:-1], axis=1)
    return np.concatenate([[True], diff])


class DuplicateFinder:
    """Collects the dedup keys of a stream of documents on disk; ``find`` names the duplicates.

    Args:
        folder: a work folder for the key files (created if missing; removed by the caller).
        near: also find MinHash near duplicates (else exact only).
        num_perm, ngram, seed: MinHash signature (see ``MinHasher``).
        threshold: estimated Jaccard similarity at and above which a candidate
            pair is a near duplicate.
        bands: LSH bands (``rows = num_perm // bands``); default from
            ``lsh_params(threshold, num_perm)``.
    """

    def __init__(
        self,
        folder: str | Path,
        *,
        near: bool,
        num_perm: int = 128,
        ngram: int = 5,
        threshold: float = 0.8,
        seed: int = 1,
        bands: int | None = None,
    ):
        if not 0 < threshold <= 1:
            raise ValueError(f"threshold must be in (0, 1], got {threshold}")
        if bands is not None and not 1 <= bands <= num_perm:
            raise ValueError(f"bands must be in [1, num_perm={num_perm}], got {bands}")
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.near, self.threshold = near, threshold
        self.bands, self.rows_per_band = (
            (bands, num_perm // bands) if bands else lsh_params(threshold, num_perm)
        )
        self.hasher = MinHasher(num_perm, ngram, seed) if near else None
        self.n = 0
        names = ["rows", "digests"]
        if near:
            names += ["sigs", *(f"band{b}" for b in range(self.bands))]
        self._files = {
            name: open(self.folder / f"{name}.bin", "wb")  # noqa: SIM115 (closed in find)
            for name in names
        }

    def add(self, rows: Sequence[int], texts: Sequence[str]) -> None:
        """Record documents ``rows`` (increasing, table order) with their normalised ``texts``."""
        self._files["rows"].write(np.asarray(rows, dtype=np.int64).tobytes())
        self._files["digests"].write(b"".join(text_digest(t) for t in texts))
        if self.hasher is not None:
            sigs = self.hasher.signatures(texts)
            self._files["sigs"].write(sigs.tobytes())
            hashes = band_hashes(sigs, self.bands, self.rows_per_band)
            for b in range(self.bands):  # one file per band: find reads one column at a time
                self._files[f"band{b}"].write(hashes[:, b].tobytes())
        self.n += len(rows)

    def _read(self, name: str, dtype, width: int = 1) -> np.ndarray:
        """A key file read into memory (not memory-mapped: mapped pages count as resident)."""
        arr = np.fromfile(self.folder / f"{name}.bin", dtype=dtype)
        return arr.reshape(self.n, width) if width > 1 else arr

    def _signature_agreement(self, pairs: np.ndarray) -> np.ndarray:
        """For each pair of document indices: signature positions on which they agree."""
        num_perm = self.hasher.num_perm
        width = num_perm * 4
        out = np.empty(len(pairs), dtype=np.int32)
        with open(self.folder / "sigs.bin", "rb") as f:
            fd = f.fileno()
            for s in range(0, len(pairs), _PAIR_CHUNK):
                p = pairs[s : s + _PAIR_CHUNK]
                need, local = np.unique(p, return_inverse=True)
                sig = np.empty((len(need), num_perm), dtype=np.uint32)
                for k, i in enumerate(need.tolist()):
                    sig[k] = np.frombuffer(os.pread(fd, width, i * width), dtype=np.uint32)
                local = local.reshape(-1, 2)
                out[s : s + len(p)] = (sig[local[:, 0]] == sig[local[:, 1]]).sum(axis=1)
        return out

    def find(self) -> Duplicates:
        """Close the files and return every duplicate with the first row of its group."""
        for f in self._files.values():
            f.close()
        rows = self._read("rows", np.int64)
        # Exact: equal digests; the first in table order stays.
        digests = self._read("digests", np.uint64, 2)
        order = np.lexsort((np.arange(self.n), digests[:, 1], digests[:, 0]))
        starts = _run_starts(digests[order])
        group_first = order[np.maximum.accumulate(np.where(starts, np.arange(self.n), 0))]
        exact_of = np.empty(self.n, dtype=np.int64)
        exact_of[order] = group_first  # index of the first copy, itself when unique
        del order, starts, group_first, digests
        is_exact = exact_of != np.arange(self.n)
        near_of = self._near_groups(~is_exact) if self.hasher is not None else None

        dup_idx, reason, first = [], [], []
        if near_of is not None:
            # An exact copy of a near duplicate points to the near group's first.
            root = np.where(near_of >= 0, near_of, np.arange(self.n))
            exact_of = root[exact_of]
            is_near = (near_of >= 0) & ~is_exact
            dup_idx.append(np.flatnonzero(is_near))
            reason.append(np.full(int(is_near.sum()), NEAR, np.uint8))
            first.append(near_of[is_near])
        dup_idx.append(np.flatnonzero(is_exact))
        reason.append(np.full(int(is_exact.sum()), EXACT, np.uint8))
        first.append(exact_of[is_exact])
        idx = np.concatenate(dup_idx)
        order = np.argsort(idx, kind="stable")
        return Duplicates(
            rows=rows[idx[order]],
            reason=np.concatenate(reason)[order],
            first=rows[np.concatenate(first)[order]],
        )

    def _near_groups(self, active: np.ndarray) -> np.ndarray:
        """For each document: the index of its near-duplicate group's first member, -1 if none."""
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components

        idx = np.flatnonzero(active)
        pairs = []
        for b in range(self.bands):
            h = self._read(f"band{b}", np.uint64)[idx]
            order = np.argsort(h, kind="stable")  # equal hashes stay in table order
            sh, members = h[order], idx[order]
            same = np.flatnonzero(sh[1:] == sh[:-1]) + 1
            if len(same) == 0:
                continue
            # Each member of a run is paired with the run's first and with its predecessor.
            run_first = np.maximum.accumulate(np.where(_run_starts(sh), np.arange(len(sh)), 0))
            pairs.append(np.stack([members[run_first[same]], members[same]], axis=1))
            pairs.append(np.stack([members[same - 1], members[same]], axis=1))
        out = np.full(self.n, -1, dtype=np.int64)
        if not pairs:
            return out
        pairs = np.unique(np.concatenate(pairs), axis=0)
        pairs = pairs[pairs[:, 0] != pairs[:, 1]]
        need = math.ceil(self.threshold * self.hasher.num_perm - 1e-9)
        pairs = pairs[self._signature_agreement(pairs) >= need]
        if len(pairs) == 0:
            return out
        nodes, local = np.unique(pairs, return_inverse=True)
        local = local.reshape(-1, 2)
        graph = coo_matrix(
            (np.ones(len(local), dtype=np.int8), (local[:, 0], local[:, 1])),
            shape=(len(nodes), len(nodes)),
        )
        _, label = connected_components(graph, directed=False)
        # nodes are sorted, so the first node of each label is its smallest index.
        first_of_label = np.full(label.max() + 1, -1, dtype=np.int64)
        for_label = np.unique(label, return_index=True)[1]
        first_of_label[label[for_label]] = nodes[for_label]
        roots = first_of_label[label]
        dup = nodes != roots
        out[nodes[dup]] = roots[dup]
        return out
