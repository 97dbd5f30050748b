"""Tokenised binary shards of the selected corpus, and their reader.

Folder layout (written atomically as a whole)::

    shard_00000.bin ...   raw little-endian token ids (uint16 if vocab_size <= 65535,
                          else uint32); each document's tokens then the eos id
    manifest.json         {"tokenizer", "dtype", "vocab_size", "eos_id", "total_tokens",
                           "total_docs", "shards": [{"file", "tokens", "docs", "sha256"}],
                           "sources": {source: {"docs", "tokens"}}}

Documents are never split across shards: a shard is closed once it holds at
least ``tokens_per_shard`` tokens. ``load_tokens`` returns all tokens as one
1-D array (memory-mapped when there is a single shard).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from domainllm.errors import DataError
from domainllm.io import atomic_path, read_json, sha256_file

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
UINT16_MAX_VOCAB = 65535


def _special_token(folder: Path, name: str) -> str | None:
    """A special token's string from tokenizer_config.json / special_tokens_map.json."""
    for fname in ("tokenizer_config.json", "special_tokens_map.json"):
        f = folder / fname
        if f.exists():
            value = read_json(f).get(name)
            if isinstance(value, dict):
                value = value.get("content")
            if isinstance(value, str) and value:
                return value
    return None


class ShardTokenizer:
    """The few tokenizer operations sharding needs, on a ``save_pretrained`` folder.

    Uses the fast ``tokenizers`` library directly when the folder has a
    ``tokenizer.json`` (no transformers import), else transformers' AutoTokenizer.
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise DataError(f"{folder}: tokenizer folder not found")
        self._fast = None
        self._hf = None
        tok_json = self.folder / "tokenizer.json"
        if tok_json.exists():
            from tokenizers import Tokenizer

            self._fast = Tokenizer.from_file(str(tok_json))
            eos = _special_token(self.folder, "eos_token")
            self.eos_id = None if eos is None else self._fast.token_to_id(eos)
            self.vocab_size = self._fast.get_vocab_size(with_added_tokens=True)
        else:
            from transformers import AutoTokenizer

            self._hf = AutoTokenizer.from_pretrained(str(self.folder))
            self.eos_id = self._hf.eos_token_id
            self.vocab_size = len(self._hf)
        if self.eos_id is None:
            raise DataError(f"{folder}: the tokenizer has no eos token (tokenizer_config.json)")

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        if self._fast is not None:
            return [e.ids for e in self._fast.encode_batch(texts, add_special_tokens=False)]
        return self._hf(texts, add_special_tokens=False)["input_ids"]

    def decode(self, ids) -> str:
        ids = [int(i) for i in ids]
        if self._fast is not None:
            return self._fast.decode(ids, skip_special_tokens=False)
        return self._hf.decode(ids, skip_special_tokens=False)


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (vocab_size <= 65535), else uint32."""
    return np.dtype("<u2") if vocab_size <= UINT16_MAX_VOCAB else np.dtype("<u4")


def write_shards(
    selected: str,
    tokenizer: str,
    output: str,
    *,
    tokens_per_shard: int = 1_000_000,
    batch_docs: int = 512,
) -> None:
    """Tokenise the selected documents into ``output`` (a folder of shards + manifest).

    Args:
        selected: Parquet with ``text`` and ``source`` (the selection output), in
            the order the documents are written.
        tokenizer: a ``save_pretrained`` folder (the base model's).
        output: the shard folder, replaced atomically.
        tokens_per_shard: a shard is closed once it reaches this many tokens.
        batch_docs: documents tokenised per batch.
    """
    import polars as pl
    from tqdm import tqdm

    if tokens_per_shard < 1:
        raise DataError("config key 'corpus.shards.tokens_per_shard' must be >= 1")
    if not Path(selected).exists():
        raise DataError(f"{selected}: file not found")
    df = pl.read_parquet(selected)
    for col in ("text", "source"):
        if col not in df.columns:
            raise DataError(f"{selected}: no '{col}' column")
    if df.height == 0:
        raise DataError(f"{selected}: no documents to tokenise")
    tok = ShardTokenizer(tokenizer)
    dtype = token_dtype(tok.vocab_size)
    eos = np.array([tok.eos_id], dtype=dtype)

    shards: list[dict] = []
    sources: dict[str, dict] = {}
    with atomic_path(output, directory=True) as tmp:
        state = {"f": None, "tokens": 0, "docs": 0}

        def close_shard() -> None:
            if state["f"] is None:
                return
            state["f"].close()
            name = f"shard_{len(shards):05d}.bin"
            shards.append(
                {
                    "file": name,
                    "tokens": state["tokens"],
                    "docs": state["docs"],
                    "sha256": sha256_file(tmp / name),
                }
            )
            state.update(f=None, tokens=0, docs=0)

        texts = df["text"].to_list()
        srcs = df["source"].to_list()
        with tqdm(total=len(texts), desc="shards", unit="doc", mininterval=5) as bar:
            for start in range(0, len(texts), batch_docs):
                batch = texts[start : start + batch_docs]
                for ids, src in zip(
                    tok.encode_batch(batch), srcs[start : start + batch_docs], strict=True
                ):
                    if state["f"] is None:
                        state["f"] = open(tmp / f"shard_{len(shards):05d}.bin", "wb")
                    arr = np.asarray(ids, dtype=np.int64)
                    if arr.size and (arr.min() < 0 or arr.max() >= tok.vocab_size):
                        raise DataError(f"{tokenizer}: token id outside the vocabulary")
                    state["f"].write(arr.astype(dtype).tobytes())
                    state["f"].write(eos.tobytes())
                    n = int(arr.size) + 1
                    state["tokens"] += n
                    state["docs"] += 1
                    s = sources.setdefault(src, {"docs": 0, "tokens": 0})
                    s["docs"] += 1
                    s["tokens"] += n
                    if state["tokens"] >= tokens_per_shard:
                        close_shard()
                bar.update(len(batch))
        close_shard()
        manifest = {
            "tokenizer": str(tokenizer),
            "dtype": dtype.name,
            "vocab_size": int(tok.vocab_size),
            "eos_id": int(tok.eos_id),
            "total_tokens": sum(s["tokens"] for s in shards),
            "total_docs": sum(s["docs"] for s in shards),
            "shards": shards,
            "sources": sources,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, ensure_ascii=False, indent=2) + "\n")
    log.info(
        "shards: %d documents, %d tokens in %d shard(s) (%s) -> %s",
        manifest["total_docs"],
        manifest["total_tokens"],
        len(shards),
        dtype.name,
        output,
    )


def read_manifest(shard_dir: str | Path) -> dict:
    """Read and check the manifest of a shard folder (DataError naming what is wrong)."""
    path = Path(shard_dir) / MANIFEST
    if not path.exists():
        raise DataError(f"{path}: no shard manifest (not a shard folder?)")
    manifest = read_json(path)
    for key in ("dtype", "shards", "eos_id", "total_tokens"):
        if key not in manifest:
            raise DataError(f"{path}: no '{key}' key")
    if manifest["dtype"] not in ("uint16", "uint32"):
        raise DataError(f"{path}: unsupported dtype '{manifest['dtype']}'")
    if not manifest["shards"]:
        raise DataError(f"{path}: lists no shards")
    return manifest


class TokenStream:
    """Several memory-mapped shards seen as one 1-D token array, without copying.

    Supports ``len()``, integer indexing, contiguous slices (which may span shard
    boundaries; only the slice is read into memory) and ``np.asarray``.
    """

    def __init__(self, arrays: list[np.ndarray]):
        self.arrays = arrays
        self.offsets = np.cumsum([0] + [a.size for a in arrays])
        self.dtype = arrays[0].dtype

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def size(self) -> int:
        return len(self)

    @property
    def shape(self) -> tuple[int]:
        return (len(self),)

    ndim = 1

    def __getitem__(self, key):
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step != 1:
                return np.asarray(self)[key]
            parts = []
            first = int(np.searchsorted(self.offsets, start, side="right")) - 1
            for i in range(max(first, 0), len(self.arrays)):
                lo, hi = self.offsets[i], self.offsets[i + 1]
                if lo >= stop:
                    break
                parts.append(self.arrays[i][max(start, lo) - lo : min(stop, hi) - lo])
            return np.concatenate(parts) if parts else np.zeros(0, dtype=self.dtype)
        index = int(key) + (len(self) if int(key) < 0 else 0)
        if not 0 <= index < len(self):
            raise IndexError(key)
        i = int(np.searchsorted(self.offsets, index, side="right")) - 1
        return self.arrays[i][index - self.offsets[i]]

    def __array__(self, dtype=None, copy=None):
        out = np.concatenate(self.arrays)
        return out.astype(dtype) if dtype is not None else out


def load_tokens(shard_dir: str | Path, *, verify: bool = False) -> np.ndarray | TokenStream:
    """All tokens of a shard folder as one 1-D token sequence, in shard order.

    A single shard is returned as a read-only ``np.memmap``; several as a
    ``TokenStream`` over their memory maps, so corpora larger than memory can be
    sampled by slicing.

    Args:
        shard_dir: the folder written by ``write_shards``.
        verify: also check every shard's sha256 (reads all bytes).

    Raises:
        DataError: a missing shard, a size that disagrees with the manifest or a
            checksum mismatch, naming the file.
    """
    shard_dir = Path(shard_dir)
    manifest = read_manifest(shard_dir)
    dtype = np.dtype(manifest["dtype"]).newbyteorder("<")
    arrays = []
    for entry in manifest["shards"]:
        f = shard_dir / entry["file"]
        if not f.exists():
            raise DataError(f"{f}: shard listed in {shard_dir / MANIFEST} is missing")
        expected = int(entry["tokens"]) * dtype.itemsize
        size = f.stat().st_size
        if size != expected:
            raise DataError(
                f"{f}: {size} bytes, but the manifest says {entry['tokens']} tokens "
                f"({expected} bytes of {manifest['dtype']})"
            )
        if verify and sha256_file(f) != entry.get("sha256"):
            raise DataError(f"{f}: sha256 does not match {shard_dir / MANIFEST}")
        if entry["tokens"] > 0:
            arrays.append(np.memmap(f, dtype=dtype, mode="r", shape=(int(entry["tokens"]),)))
    if not arrays:
        raise DataError(f"{shard_dir}: the shards hold no tokens")
    total = sum(a.size for a in arrays)
    if total != manifest["total_tokens"]:
        raise DataError(
            f"{shard_dir / MANIFEST}: total_tokens {manifest['total_tokens']}, "
            f"but the shards hold {total}"
        )
    return arrays[0] if len(arrays) == 1 else TokenStream(arrays)


def split_documents(tokens: np.ndarray, eos_id: int) -> Iterator[np.ndarray]:
    """Yield each document's tokens (without its eos) from a token stream."""
    ends = np.flatnonzero(np.asarray(tokens) == eos_id)
    start = 0
    for end in ends:
        yield tokens[start:end]
        start = end + 1


def decode_documents(shard_dir: str | Path, limit: int | None = None) -> list[str]:
    """Decode the documents of a shard folder back to text with its tokenizer.

    Args:
        shard_dir: the shard folder.
        limit: decode only the first ``limit`` documents.
    """
    manifest = read_manifest(shard_dir)
    tok = ShardTokenizer(manifest["tokenizer"])
    out = []
    for i, ids in enumerate(split_documents(load_tokens(shard_dir), manifest["eos_id"])):
        if limit is not None and i >= limit:
            break
        out.append(tok.decode(ids))
    return out
