"""Tokenised binary shards of the selected corpus, and their readers.

Folder layout (written atomically as a whole)::

    manifest.json
    train/shard_00000.bin ...       raw little-endian token ids (uint16 if vocab_size <= 65535,
    validation/shard_00000.bin ...  else uint32): each document's tokens then the eos id
    train/documents.parquet         one row per document: id, source, offset, tokens
    validation/documents.parquet

Every shard holds exactly ``tokens_per_shard`` tokens except the last of its
split; a document may continue from one shard into the next (readers see each
split as one token stream). Documents go to the validation split by a seeded
hash of their id (``validation_fraction``), so a document keeps its split
whatever else is selected, and in selection order (best first) within a split.

manifest.json (format 2)::

    {"format": 2,
     "tokenizer": {"name", "path", "sha256", "sha256_of", "vocab_size", "eos_id"},
     "dtype", "vocab_size", "eos_id", "tokens_per_shard", "validation_fraction", "split_seed",
     "splits": {"train": SPLIT, "validation": SPLIT},
     "total_tokens", "total_docs", "shards", "sources"}   <- the train split, as in format 1

    SPLIT = {"total_tokens", "total_docs", "documents": "<split>/documents.parquet",
             "shards": [{"file": "<split>/shard_00000.bin", "tokens", "docs", "sha256"}],
             "sources": {source: {"docs", "tokens"}}}

A shard's ``docs`` counts the documents that end in it. ``load_tokens(shard_dir)``
returns the train split (as training reads it), ``load_tokens(shard_dir,
split="validation")`` the validation split; format-1 folders (one flat list of
shards, no split) are still read as train. ``TokenBlocks`` / ``read_block`` give
the i-th fixed-length block of a split by memory map without reading the rest.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from domainllm.errors import DataError
from domainllm.io import atomic_path, read_json, sha256_file

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT = 2
SPLITS = ("train", "validation")
DOCUMENTS = "documents.parquet"
UINT16_MAX_VOCAB = 65535
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "vocab.txt",
)


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
    Special-token strings in a document (``<s>``, ``</s>``: an HTML strikethrough,
    say) are encoded as the text they are, never as the special tokens: the only eos
    in a shard is the one that ends each document.
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
            self._fast.encode_special_tokens = True
            eos = _special_token(self.folder, "eos_token")
            self.eos_id = None if eos is None else self._fast.token_to_id(eos)
            self.vocab_size = self._fast.get_vocab_size(with_added_tokens=True)
        else:
            from domainllm.models.tokenizer import load_tokenizer

            self._hf = load_tokenizer(self.folder)
            self.eos_id = self._hf.eos_token_id
            self.vocab_size = len(self._hf)
        if self.eos_id is None:
            raise DataError(f"{folder}: the tokenizer has no eos token (tokenizer_config.json)")

    def identity(self) -> dict:
        """Who made the tokens: folder name and path, vocabulary size, eos id, and the
        sha256 of ``tokenizer.json`` (or, without one, of the tokenizer files together)."""
        tok_json = self.folder / "tokenizer.json"
        if tok_json.exists():
            digest, of = sha256_file(tok_json), "tokenizer.json"
        else:
            files = [f for f in TOKENIZER_FILES if (self.folder / f).exists()]
            h = hashlib.sha256()
            for f in files:
                h.update(f"{f}\0{sha256_file(self.folder / f)}\n".encode())
            digest, of = h.hexdigest(), "+".join(files)
        return {
            "name": self.folder.resolve().name,
            "path": str(self.folder),
            "sha256": digest,
            "sha256_of": of,
            "vocab_size": int(self.vocab_size),
            "eos_id": int(self.eos_id),
        }

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        if self._fast is not None:
            return [e.ids for e in self._fast.encode_batch(texts, add_special_tokens=False)]
        return self._hf(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]

    def decode(self, ids) -> str:
        ids = [int(i) for i in ids]
        if self._fast is not None:
            return self._fast.decode(ids, skip_special_tokens=False)
        return self._hf.decode(ids, skip_special_tokens=False)


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (vocab_size <= 65535), else uint32."""
    return np.dtype("<u2") if vocab_size <= UINT16_MAX_VOCAB else np.dtype("<u4")


def validation_mask(ids: list[str], fraction: float, seed: int) -> np.ndarray:
    """Which documents go to the validation split: a seeded hash of each id below ``fraction``.

    A document's draw depends only on its id and ``seed``, so it keeps its split when
    the selection around it changes. With ``fraction > 0`` and at least two
    documents, both splits are non-empty (the extreme draws are moved if needed).
    """
    if not 0 <= fraction < 1:
        raise DataError(
            f"config key 'corpus.shards.validation_fraction' must be in [0, 1), got {fraction}"
        )
    u = np.array(
        [
            int.from_bytes(hashlib.sha256(f"{seed}\0{i}".encode()).digest()[:8], "big") / 2**64
            for i in ids
        ],
        dtype=np.float64,
    )
    mask = u < fraction
    if fraction > 0 and len(ids) >= 2:
        if not mask.any():
            mask[int(np.argmin(u))] = True
        if mask.all():
            mask[int(np.argmax(u))] = False
    return mask


class _SplitWriter:
    """Writes one split's token stream into fixed-size shards, hashing as it goes."""

    def __init__(self, root: Path, split: str, dtype: np.dtype, tokens_per_shard: int):
        self.root = root
        self.split = split
        self.dtype = dtype
        self.tokens_per_shard = tokens_per_shard
        (root / split).mkdir()
        self.shards: list[dict] = []
        self.sources: dict[str, dict] = {}
        self.docs: dict[str, list] = {"id": [], "source": [], "offset": [], "tokens": []}
        self.total = 0
        self._f = None
        self._hash = None
        self._n = 0
        self._ended = 0

    def _open(self) -> None:
        name = f"{self.split}/shard_{len(self.shards):05d}.bin"
        self._f = open(self.root / name, "wb")
        self._name = name
        self._hash = hashlib.sha256()
        self._n = 0
        self._ended = 0

    def _close(self) -> None:
        if self._f is None:
            return
        self._f.close()
        entry = {
            "file": self._name,
            "tokens": self._n,
            "docs": self._ended,
            "sha256": self._hash.hexdigest(),
        }
        self.shards.append(entry)
        self._f = None

    def add(self, tokens: np.ndarray, doc_id: str, source: str) -> None:
        """Append one document's tokens (its eos included)."""
        n = int(tokens.size)
        self.docs["id"].append(doc_id)
        self.docs["source"].append(source)
        self.docs["offset"].append(self.total)
        self.docs["tokens"].append(n)
        s = self.sources.setdefault(source, {"docs": 0, "tokens": 0})
        s["docs"] += 1
        s["tokens"] += n
        pos = 0
        while pos < n:
            if self._f is None:
                self._open()
            piece = tokens[pos : pos + self.tokens_per_shard - self._n]
            data = piece.tobytes()
            self._f.write(data)
            self._hash.update(data)
            self._n += piece.size
            pos += piece.size
            if pos == n:
                self._ended += 1
            if self._n == self.tokens_per_shard:
                self._close()
        self.total += n

    def finish(self) -> dict:
        import polars as pl

        self._close()
        documents = f"{self.split}/{DOCUMENTS}"
        pl.DataFrame(
            self.docs,
            schema={"id": pl.String, "source": pl.String, "offset": pl.Int64, "tokens": pl.Int64},
        ).write_parquet(self.root / documents)
        return {
            "total_tokens": self.total,
            "total_docs": len(self.docs["id"]),
            "documents": documents,
            "shards": self.shards,
            "sources": self.sources,
        }


def write_shards(
    selected: str,
    tokenizer: str,
    output: str,
    *,
    tokens_per_shard: int = 1_000_000,
    validation_fraction: float = 0.05,
    seed: int = 0,
    batch_docs: int = 512,
    read_docs: int = 16_384,
) -> dict:
    """Tokenise the selected documents into ``output`` (train/validation shards + manifest).

    Args:
        selected: Parquet with ``id``, ``source`` and ``text`` (the selection output),
            in the order the documents are written.
        tokenizer: a ``save_pretrained`` folder (the base model's).
        output: the shard folder, replaced atomically.
        tokens_per_shard: tokens in every shard but the last of each split.
        validation_fraction: share of documents held out as the validation split
            (config ``corpus.shards.validation_fraction``).
        seed: seed of the train/validation draw.
        batch_docs: documents tokenised per batch.
        read_docs: documents read from ``selected`` at a time.

    Returns:
        The manifest.

    Raises:
        DataError: a missing file or column, no documents, a bad setting (naming
            its config key), or a token id outside the vocabulary.
    """
    import polars as pl
    from tqdm import tqdm

    if tokens_per_shard < 1:
        raise DataError("config key 'corpus.shards.tokens_per_shard' must be >= 1")
    if not Path(selected).exists():
        raise DataError(f"{selected}: file not found")
    schema = pl.read_parquet_schema(selected)
    for col in ("id", "text", "source"):
        if col not in schema:
            raise DataError(f"{selected}: no '{col}' column")
    meta = pl.read_parquet(selected, columns=["id", "source"])
    if meta.height == 0:
        raise DataError(f"{selected}: no documents to tokenise")
    ids = [str(i) for i in meta["id"].to_list()]
    if len(set(ids)) != len(ids):
        raise DataError(f"{selected}: duplicate document ids")
    srcs = meta["source"].to_list()
    is_val = validation_mask(ids, validation_fraction, seed)
    tok = ShardTokenizer(tokenizer)
    dtype = token_dtype(tok.vocab_size)
    eos = np.array([tok.eos_id], dtype=np.int64)

    with atomic_path(output, directory=True) as tmp:
        writers = {s: _SplitWriter(tmp, s, dtype, tokens_per_shard) for s in SPLITS}
        with tqdm(total=len(ids), desc="shards", unit="doc", mininterval=5) as bar:
            # Texts are read read_docs at a time (bounded memory), tokenised batch_docs at a time.
            for chunk_start in range(0, len(ids), read_docs):
                n = min(read_docs, len(ids) - chunk_start)
                chunk = pl.scan_parquet(selected).slice(chunk_start, n).select("text").collect()
                chunk_texts = chunk["text"].to_list()
                for offset in range(0, n, batch_docs):
                    batch = chunk_texts[offset : offset + batch_docs]
                    for j, doc_ids in enumerate(tok.encode_batch(batch)):
                        arr = np.asarray(doc_ids, dtype=np.int64)
                        if arr.size and (arr.min() < 0 or arr.max() >= tok.vocab_size):
                            raise DataError(f"{tokenizer}: token id outside the vocabulary")
                        i = chunk_start + offset + j
                        writer = writers["validation" if is_val[i] else "train"]
                        writer.add(np.concatenate([arr, eos]).astype(dtype), ids[i], srcs[i])
                    bar.update(len(batch))
        splits = {s: w.finish() for s, w in writers.items()}
        train = splits["train"]
        manifest = {
            "format": FORMAT,
            "tokenizer": tok.identity(),
            "dtype": dtype.name,
            "vocab_size": int(tok.vocab_size),
            "eos_id": int(tok.eos_id),
            "tokens_per_shard": int(tokens_per_shard),
            "validation_fraction": validation_fraction,
            "split_seed": seed,
            "splits": splits,
            # The train split again at the top level, where format-1 readers look.
            "total_tokens": train["total_tokens"],
            "total_docs": train["total_docs"],
            "shards": train["shards"],
            "sources": train["sources"],
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, ensure_ascii=False, indent=2) + "\n")
    log.info(
        "shards: train %d docs / %d tokens in %d shard(s), validation %d / %d in %d (%s) -> %s",
        train["total_docs"],
        train["total_tokens"],
        len(train["shards"]),
        splits["validation"]["total_docs"],
        splits["validation"]["total_tokens"],
        len(splits["validation"]["shards"]),
        dtype.name,
        output,
    )
    return manifest


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
    vocab = manifest.get("vocab_size")
    if manifest["dtype"] == "uint16" and isinstance(vocab, int) and vocab > UINT16_MAX_VOCAB:
        raise DataError(
            f"{path}: dtype uint16 cannot hold the ids of a {vocab}-token vocabulary (ids up "
            f"to {vocab - 1}; uint16 stops at {UINT16_MAX_VOCAB}): ids above it would have "
            "wrapped around; rewrite the shards (write_shards picks uint32 for this tokenizer)"
        )
    if not manifest["shards"]:
        raise DataError(f"{path}: lists no shards")
    return manifest


def split_entry(manifest: dict, split: str, where: str | Path = MANIFEST) -> dict:
    """The manifest's entry for ``split`` (format 1: the whole folder is ``train``)."""
    splits = manifest.get("splits")
    if splits is None:
        if split == "train":
            return manifest
        raise DataError(f"{where}: a format-1 shard folder has no '{split}' split (only train)")
    if split not in splits:
        raise DataError(f"{where}: no '{split}' split (has: {', '.join(splits)})")
    return splits[split]


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


def load_tokens(
    shard_dir: str | Path, split: str = "train", *, verify: bool = False
) -> np.ndarray | TokenStream:
    """All tokens of one split of a shard folder as one 1-D token sequence, in shard order.

    A single shard is returned as a read-only ``np.memmap``; several as a
    ``TokenStream`` over their memory maps, so corpora larger than memory can be
    sampled by slicing.

    Args:
        shard_dir: the folder written by ``write_shards``.
        split: ``train`` (the default: what training reads) or ``validation``.
        verify: also check every shard's sha256 (reads all bytes).

    Raises:
        DataError: a missing shard, a size that disagrees with the manifest, a
            checksum mismatch or an empty split, naming the file.
    """
    shard_dir = Path(shard_dir)
    manifest = read_manifest(shard_dir)
    entry = split_entry(manifest, split, shard_dir / MANIFEST)
    dtype = np.dtype(manifest["dtype"]).newbyteorder("<")
    arrays = []
    for shard in entry["shards"]:
        f = shard_dir / shard["file"]
        if not f.exists():
            raise DataError(f"{f}: shard listed in {shard_dir / MANIFEST} is missing")
        expected = int(shard["tokens"]) * dtype.itemsize
        size = f.stat().st_size
        if size != expected:
            raise DataError(
                f"{f}: {size} bytes, but the manifest says {shard['tokens']} tokens "
                f"({expected} bytes of {manifest['dtype']})"
            )
        if verify and sha256_file(f) != shard.get("sha256"):
            raise DataError(f"{f}: sha256 does not match {shard_dir / MANIFEST}")
        if shard["tokens"] > 0:
            arrays.append(np.memmap(f, dtype=dtype, mode="r", shape=(int(shard["tokens"]),)))
    if not arrays:
        hint = " (corpus.shards.validation_fraction is 0?)" if split == "validation" else ""
        raise DataError(f"{shard_dir}: the {split} split holds no tokens{hint}")
    total = sum(a.size for a in arrays)
    if total != entry["total_tokens"]:
        raise DataError(
            f"{shard_dir / MANIFEST}: {split} total_tokens {entry['total_tokens']}, "
            f"but its shards hold {total}"
        )
    return arrays[0] if len(arrays) == 1 else TokenStream(arrays)


class TokenBlocks:
    """The fixed-length blocks of one split: ``blocks[i]`` is tokens ``[i*L, (i+1)*L)``.

    Only the shard(s) a block lies in are touched (memory maps); a block may span
    a shard boundary. The tail shorter than ``block_len`` is not a block.

    Args:
        shard_dir: the shard folder.
        block_len: tokens per block.
        split: ``train`` or ``validation``.
        verify: check the shards' sha256 on opening.
    """

    def __init__(
        self, shard_dir: str | Path, block_len: int, *, split: str = "train", verify: bool = False
    ):
        if block_len < 1:
            raise ValueError(f"block_len must be >= 1, got {block_len}")
        self.tokens = load_tokens(shard_dir, split, verify=verify)
        self.block_len = int(block_len)
        self.split = split

    def __len__(self) -> int:
        return len(self.tokens) // self.block_len

    def __getitem__(self, index: int) -> np.ndarray:
        i = int(index) + (len(self) if int(index) < 0 else 0)
        if not 0 <= i < len(self):
            raise IndexError(f"block {index} of {len(self)} ({self.split})")
        start = i * self.block_len
        return np.array(self.tokens[start : start + self.block_len], copy=True)

    def __iter__(self) -> Iterator[np.ndarray]:
        for i in range(len(self)):
            yield self[i]


def read_block(
    shard_dir: str | Path, index: int, block_len: int, *, split: str = "train"
) -> np.ndarray:
    """Block ``index`` of ``block_len`` tokens of a split, read by memory map (a copy)."""
    return TokenBlocks(shard_dir, block_len, split=split)[index]


def split_documents(tokens: np.ndarray, eos_id: int) -> Iterator[np.ndarray]:
    """Yield each document's tokens (without its eos) from a token stream."""
    ends = np.flatnonzero(np.asarray(tokens) == eos_id)
    start = 0
    for end in ends:
        yield tokens[start:end]
        start = end + 1


def decode_documents(
    shard_dir: str | Path, limit: int | None = None, *, split: str = "train"
) -> list[str]:
    """Decode the documents of one split back to text with the manifest's tokenizer.

    Args:
        shard_dir: the shard folder.
        limit: decode only the first ``limit`` documents.
        split: ``train`` or ``validation``.
    """
    manifest = read_manifest(shard_dir)
    tokenizer = manifest["tokenizer"]
    tok = ShardTokenizer(tokenizer["path"] if isinstance(tokenizer, dict) else tokenizer)
    out = []
    for i, ids in enumerate(split_documents(load_tokens(shard_dir, split), manifest["eos_id"])):
        if limit is not None and i >= limit:
            break
        out.append(tok.decode(ids))
    return out
