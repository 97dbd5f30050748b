"""Select the corpus documents most similar to the domain seeds: ``selected.parquet``.

Documents and seed texts are embedded by one backend (``domainllm.corpus.embed``);
a document's score is its cosine to the seed centroid (``centroid``) or its mean
cosine to its k nearest seeds (``topk_mean``). The cut keeps the ``top_k`` best,
those at or above a score ``quantile``, or those at or above a cosine ``threshold``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from domainllm.errors import DataError, PipelineError
from domainllm.io import write_json, write_parquet

log = logging.getLogger(__name__)

QUANTILES = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)


def similarity_scores(
    docs: np.ndarray, seeds: np.ndarray, *, score: str, topk: int = 5
) -> np.ndarray:
    """Score each document row against the seed rows (both L2-normalised).

    Args:
        docs: (n, d) document embeddings.
        seeds: (m, d) seed embeddings.
        score: ``centroid`` (cosine to the normalised mean seed) or ``topk_mean``
            (mean cosine to the ``topk`` most similar seeds).
    """
    if score == "centroid":
        centroid = seeds.mean(axis=0)
        centroid = centroid / max(float(np.linalg.norm(centroid)), 1e-12)
        return (docs @ centroid).astype(np.float32)
    if score == "topk_mean":
        k = max(1, min(topk, seeds.shape[0]))
        out = np.empty(docs.shape[0], dtype=np.float32)
        for i in range(0, docs.shape[0], 4096):  # bounded memory on big corpora
            sims = docs[i : i + 4096] @ seeds.T
            out[i : i + 4096] = np.sort(np.partition(sims, -k, axis=1)[:, -k:], axis=1).mean(axis=1)
        return out
    raise PipelineError(f"config key 'corpus.select.score': unknown score '{score}'")


def cut_threshold(scores: np.ndarray, method: str, value: float) -> float:
    """The lowest score that is kept under ``method``/``value``.

    Raises:
        PipelineError: a value outside the method's range, naming ``corpus.select.value``.
    """
    if method == "top_k":
        if value < 1 or int(value) != value:
            raise PipelineError(
                f"config key 'corpus.select.value': top_k needs a whole number >= 1, got {value}"
            )
        k = min(int(value), len(scores))
        return float(np.sort(scores)[::-1][k - 1])
    if method == "quantile":
        if not 0 <= value < 1:
            raise PipelineError(
                f"config key 'corpus.select.value': a quantile must be in [0, 1), got {value}"
            )
        return float(np.quantile(scores, value))
    if method == "threshold":
        if not -1 <= value <= 1:
            raise PipelineError(
                "config key 'corpus.select.value': a cosine threshold must be in [-1, 1], "
                f"got {value}"
            )
        return float(value)
    raise PipelineError(f"config key 'corpus.select.method': unknown method '{method}'")


def select_domain(
    clean: str,
    seeds: str,
    output: str,
    report: str,
    *,
    backend: str = "tfidf-svd",
    model: str | None = None,
    svd_dim: int = 128,
    score: str = "centroid",
    topk: int = 5,
    method: str = "quantile",
    value: float = 0.5,
    max_chars: int | None = 4000,
    seed: int = 0,
) -> None:
    """Score the cleaned corpus against the domain seeds and keep the most similar.

    Args:
        clean: the cleaned corpus (id, source, title, text, lang).
        seeds: the domain seed table (id, title, text).
        output: Parquet of the kept documents plus ``score``, best first.
        report: JSON with the backend, method, value, the threshold used, n_in,
            n_kept, score quantiles, per-source counts and the seeds' own scores.
        backend, model, svd_dim, score, topk, method, value, max_chars: config
            ``corpus.select.*``.
        seed: random state of the embedding fit.

    Raises:
        PipelineError: a cut that keeps nothing (naming ``corpus.select.value``).
    """
    import polars as pl

    for p in (clean, seeds):
        if not Path(p).exists():
            raise DataError(f"{p}: file not found")
    docs = pl.read_parquet(clean)
    seed_df = pl.read_parquet(seeds)
    for name, df, cols in ((clean, docs, ("id", "source", "text")), (seeds, seed_df, ("text",))):
        missing = [c for c in cols if c not in df.columns]
        if missing:
            raise DataError(f"{name}: missing column(s) {', '.join(missing)}")
    if docs.height == 0:
        raise DataError(f"{clean}: no documents to select from")
    if seed_df.height == 0:
        raise DataError(f"{seeds}: no seed documents")

    doc_texts = docs["text"].to_list()
    seed_texts = seed_df["text"].to_list()
    from domainllm.corpus.embed import get_embedder

    embedder = get_embedder(backend, model=model, svd_dim=svd_dim, max_chars=max_chars, seed=seed)
    # The fit sees corpus and seeds, so the space has axes for the domain's vocabulary.
    emb = embedder.fit_encode(doc_texts + seed_texts)
    doc_emb, seed_emb = emb[: len(doc_texts)], emb[len(doc_texts) :]
    scores = similarity_scores(doc_emb, seed_emb, score=score, topk=topk)
    seed_scores = similarity_scores(seed_emb, seed_emb, score=score, topk=topk)

    threshold = cut_threshold(scores, method, value)
    keep = scores >= threshold
    if method == "top_k":  # ties at the threshold must not keep more than k
        keep = np.zeros(len(scores), dtype=bool)
        order = np.lexsort((np.arange(len(scores)), -scores))
        keep[order[: min(int(value), len(scores))]] = True
    n_kept = int(keep.sum())
    if n_kept == 0:
        raise PipelineError(
            f"config key 'corpus.select.value': the cut ({method}={value}, threshold "
            f"{threshold:.4f}) keeps no document; scores range "
            f"{scores.min():.4f}..{scores.max():.4f}"
        )

    scored = docs.with_columns(pl.Series("score", scores, dtype=pl.Float64))
    selected = scored.filter(pl.Series(keep)).sort(["score", "id"], descending=[True, False])
    write_parquet(selected, output)

    per_source = {}
    for src in docs["source"].unique(maintain_order=True).to_list():
        mask = (docs["source"] == src).to_numpy()
        per_source[src] = {
            "n_in": int(mask.sum()),
            "n_kept": int((mask & keep).sum()),
            "mean_score": round(float(scores[mask].mean()), 6),
        }
    write_json(
        {
            "backend": backend,
            "model": getattr(embedder, "model_path", None),
            "svd_dim": svd_dim if backend == "tfidf-svd" else None,
            "score": score,
            "topk": topk if score == "topk_mean" else None,
            "method": method,
            "value": value,
            "threshold": threshold,
            "n_in": int(docs.height),
            "n_kept": n_kept,
            "n_seeds": int(seed_df.height),
            "score_quantiles": {str(q): round(float(np.quantile(scores, q)), 6) for q in QUANTILES},
            "seed_score_mean": round(float(seed_scores.mean()), 6),
            "per_source": per_source,
        },
        report,
    )
    log.info(
        "select: kept %d of %d documents (%s=%s, threshold %.4f)",
        n_kept,
        docs.height,
        method,
        value,
        threshold,
    )
