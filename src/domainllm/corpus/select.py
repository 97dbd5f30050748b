"""Select the corpus documents most similar to the domain seeds: ``selected.parquet``.

Documents and seed texts are embedded by one fitted backend
(``domainllm.corpus.embed``: ``fit_embedder`` once, ``embed_corpus`` per part); this
module only reads those cached embeddings, scores and cuts. A document's score is
its cosine to the seed centroid (``centroid``) or its mean cosine to its k nearest
seeds (``topk_mean``). The cut keeps the ``top_k`` best, those at or above a score
``quantile``, or those at or above a cosine ``threshold``. The kept documents are
ordered by score, then id, so the output does not depend on the number of parts.
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
        m = seeds.shape[0]
        k = max(1, min(topk, m))
        seeds_t = np.ascontiguousarray(seeds.T)
        out = np.empty(docs.shape[0], dtype=np.float32)
        # Compute bound (2 * m flops per 4 bytes read): a matrix product per
        # block, then the k largest of m per row; their order does not matter
        # for the mean, so no sort. Blocks keep the m-column product in cache.
        for i in range(0, docs.shape[0], 2048):
            sims = docs[i : i + 2048] @ seeds_t
            if k == 1:
                out[i : i + 2048] = sims.max(axis=1)
            elif k == m:
                out[i : i + 2048] = sims.mean(axis=1)
            else:
                out[i : i + 2048] = np.partition(sims, m - k, axis=1)[:, m - k :].mean(axis=1)
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


def _load_matrix(path: str, what: str, *, mmap: bool = False) -> np.ndarray:
    if not Path(path).is_file():
        raise DataError(f"{path}: {what} not found")
    try:
        arr = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise DataError(f"{path}: not a .npy array ({e})") from e
    if arr.ndim != 2 or arr.dtype != np.float32:
        raise DataError(f"{path}: expected a 2-D float32 array, got {arr.dtype} {arr.shape}")
    return arr


def _global_blocks(parts: list[np.ndarray], block: int):
    """Rows of the concatenated parts as contiguous blocks of ``block`` rows.

    Block boundaries depend only on the global row index, never on where the
    parts end, so the BLAS calls (and thus the scores, bit for bit) are the same
    whatever the number of parts.
    """
    offsets = np.cumsum([0] + [p.shape[0] for p in parts])
    total = int(offsets[-1])
    for start in range(0, total, block):
        stop = min(start + block, total)
        pieces = []
        for i, p in enumerate(parts):
            lo, hi = int(offsets[i]), int(offsets[i + 1])
            if hi <= start or lo >= stop:
                continue
            pieces.append(np.asarray(p[max(start, lo) - lo : min(stop, hi) - lo]))
        yield np.ascontiguousarray(np.concatenate(pieces), dtype=np.float32)


def select_domain(
    clean: str,
    seeds: str,
    embeddings: list[str],
    ids: list[str],
    output: str,
    report: str,
    *,
    histogram: str | None = None,
    markdown: str | None = None,
    embedder: str | None = None,
    score: str = "centroid",
    topk: int = 5,
    method: str = "quantile",
    value: float = 0.5,
    report_docs: int = 10,
    block_rows: int = 8192,
) -> None:
    """Score the cached part embeddings against the seed embeddings and cut.

    Nothing is embedded here: changing the cut (``corpus.select.method``/``value``)
    or the score re-ranks the cached embeddings of ``embed_corpus`` in seconds.

    Args:
        clean: the cleaned corpus (id, source, title, text, lang).
        seeds: the seed embeddings (``fit_embedder``'s ``.npy``).
        embeddings: the parts' embeddings (``.npy``), in part order.
        ids: the parts' id tables (``.ids.parquet``), in the same order; together
            they must list ``clean``'s ids in file order (else the cache is stale).
        output: Parquet of the kept documents plus ``score``, best first (ties by id).
        report: JSON with the embedder, method, value, the threshold used, n_in,
            n_kept, score quantiles, per-source counts and the seeds' own scores.
        histogram: PNG of the score distribution with the cut marked (optional).
        markdown: a report of the top and bottom kept and dropped documents (optional).
        embedder: the saved embedder state, recorded in the report (optional).
        score, topk, method, value: config ``corpus.select.*``.
        report_docs: documents listed per section of the markdown report.
        block_rows: documents scored per matrix product.

    Raises:
        DataError: a missing or inconsistent input, naming the file.
        PipelineError: a cut that keeps nothing (naming ``corpus.select.value``).
    """
    import polars as pl

    if len(embeddings) != len(ids) or not embeddings:
        raise PipelineError(
            f"select_domain needs one id table per embedding part, got {len(embeddings)} "
            f"embedding file(s) and {len(ids)} id table(s)"
        )
    if not Path(clean).exists():
        raise DataError(f"{clean}: file not found")
    schema = pl.read_parquet_schema(clean)
    missing = [c for c in ("id", "source", "text") if c not in schema]
    if missing:
        raise DataError(f"{clean}: missing column(s) {', '.join(missing)}")
    meta = pl.read_parquet(clean, columns=["id", "source"])
    if meta.height == 0:
        raise DataError(f"{clean}: no documents to select from")
    seed_emb = np.asarray(_load_matrix(seeds, "seed embeddings"))
    if seed_emb.shape[0] == 0:
        raise DataError(f"{seeds}: no seed embeddings")

    clean_ids = meta["id"]
    parts = []
    offset = 0
    for emb_path, ids_path in zip(embeddings, ids, strict=True):
        emb = _load_matrix(emb_path, "part embeddings", mmap=True)
        if emb.shape[1] != seed_emb.shape[1]:
            raise DataError(
                f"{emb_path}: embeddings of dimension {emb.shape[1]}, but the seeds' "
                f"({seeds}) have {seed_emb.shape[1]}: made by another embedder"
            )
        if not Path(ids_path).exists():
            raise DataError(f"{ids_path}: file not found")
        part_ids = pl.read_parquet(ids_path, columns=["id"])["id"]
        if part_ids.len() != emb.shape[0]:
            raise DataError(f"{ids_path}: {part_ids.len()} ids for {emb.shape[0]} embeddings")
        expected = clean_ids.slice(offset, part_ids.len())
        if expected.len() != part_ids.len() or not part_ids.equals(expected):
            raise DataError(
                f"{ids_path}: ids differ from {clean} rows {offset}..{offset + part_ids.len()}: "
                "the embeddings are stale (rerun embed_corpus)"
            )
        offset += part_ids.len()
        parts.append(emb)
    if offset != meta.height:
        raise DataError(
            f"{clean}: {meta.height} documents, but the embedding parts cover {offset}: "
            "the embeddings are stale (rerun embed_corpus)"
        )

    scores = np.concatenate(
        [
            similarity_scores(block, seed_emb, score=score, topk=topk)
            for block in _global_blocks(parts, block_rows)
        ]
    )
    seed_scores = similarity_scores(seed_emb, seed_emb, score=score, topk=topk)

    threshold = cut_threshold(scores, method, value)
    keep = scores >= threshold
    if method == "top_k":  # ties at the threshold must not keep more than k
        keep = np.zeros(len(scores), dtype=bool)
        keep[rank_order(scores, clean_ids)[: min(int(value), len(scores))]] = True
    n_kept = int(keep.sum())
    if n_kept == 0:
        raise PipelineError(
            f"config key 'corpus.select.value': the cut ({method}={value}, threshold "
            f"{threshold:.4f}) keeps no document; scores range "
            f"{scores.min():.4f}..{scores.max():.4f}"
        )

    kept_rows = np.flatnonzero(keep)
    selected = read_rows(clean, kept_rows, scores)
    write_parquet(selected, output)

    per_source = {}
    sources = meta["source"].to_numpy()
    for src in meta["source"].unique(maintain_order=True).to_list():
        mask = sources == src
        per_source[src] = {
            "n_in": int(mask.sum()),
            "n_kept": int((mask & keep).sum()),
            "mean_score": round(float(scores[mask].mean()), 6),
        }
    from domainllm.corpus.embed import embedder_info

    info = embedder_info(embedder) if embedder else {}
    summary = {
        "backend": info.get("backend"),
        "model": info.get("model"),
        "svd_dim": info.get("svd_dim"),
        "dim": int(seed_emb.shape[1]),
        "score": score,
        "topk": topk if score == "topk_mean" else None,
        "method": method,
        "value": value,
        "threshold": threshold,
        "n_in": int(meta.height),
        "n_kept": n_kept,
        "n_seeds": int(seed_emb.shape[0]),
        "n_parts": len(parts),
        "score_quantiles": {str(q): round(float(np.quantile(scores, q)), 6) for q in QUANTILES},
        "seed_score_mean": round(float(seed_scores.mean()), 6),
        "per_source": per_source,
    }
    if histogram or markdown:
        from domainllm.corpus import report as rep

        if histogram:
            rep.score_histogram(scores, sources, threshold, histogram, summary=summary)
        if markdown:
            order = rank_order(scores, clean_ids)
            kept_order = order[keep[order]]
            dropped_order = order[~keep[order]]
            k = report_docs
            sections = {
                "Top kept": kept_order[:k],
                "Bottom kept (just above the cut)": kept_order[-k:][::-1],
                "Top dropped (just below the cut)": dropped_order[:k],
                "Bottom dropped": dropped_order[-k:][::-1],
            }
            rows = np.unique(np.concatenate(list(sections.values())))
            table = read_rows(clean, rows, scores, sort=False)
            by_row = {int(r): d for r, d in zip(rows, table.iter_rows(named=True), strict=True)}
            rep.selection_markdown(
                summary,
                {name: [by_row[int(r)] for r in idx] for name, idx in sections.items()},
                markdown,
                histogram=histogram,
            )
    write_json(summary, report)
    log.info(
        "select: kept %d of %d documents (%s=%s, threshold %.4f, %d part(s))",
        n_kept,
        meta.height,
        method,
        value,
        threshold,
        len(parts),
    )


def rank_order(scores: np.ndarray, ids) -> np.ndarray:
    """Row indices best first: score descending, ties by id (independent of row order)."""
    import polars as pl

    table = pl.DataFrame(
        {
            "row": np.arange(len(scores)),
            "id": pl.Series(ids, dtype=pl.String),
            "score": scores.astype(np.float64),
        }
    )
    return table.sort(["score", "id"], descending=[True, False])["row"].to_numpy()


def read_rows(clean: str, rows: np.ndarray, scores: np.ndarray, *, sort: bool = True):
    """Rows ``rows`` of ``clean`` (read lazily) with their ``score``; best first if ``sort``."""
    import polars as pl

    df = (
        pl.scan_parquet(clean)
        .with_row_index("_row")
        .filter(pl.col("_row").is_in(pl.Series(rows, dtype=pl.UInt32).implode()))
        .collect()
    )
    df = df.with_columns(
        pl.Series("score", scores[df["_row"].to_numpy()].astype(np.float64), dtype=pl.Float64)
    ).drop("_row")
    if sort:
        df = df.sort(["score", "id"], descending=[True, False])
    return df
