"""Do the embedding backends agree with people? Spearman on JSTS sentence pairs.

JSTS (JGLUE) pairs Japanese sentences with a human similarity score from 0 to 5.
For each backend the cosine of the two sentences' embeddings is compared with the
human score by Spearman's rank correlation (and Pearson's, for reference):

    backends.<name>   the backend as the pipeline would build it, fitted (tfidf-svd)
                      on the sentences of the pairs themselves
    pipeline          optional: a saved embedder (``fit_embedder``'s state, fitted on
                      the corpus sample and the seeds), as the selection used it

The workflow's rule measures the backends only, so it does not wait for the
corpus; pass ``embedder=`` to measure a fitted state by hand.

The result goes to ``embedding_check.json`` with the best backend named, so a
backend that does not suit the corpus's language shows up before selection is
trusted.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from domainllm.errors import DataError, PipelineError
from domainllm.io import read_jsonl, write_json

log = logging.getLogger(__name__)


def read_sts_pairs(path: str | Path, max_pairs: int | None = None):
    """The first ``max_pairs`` pairs of a JSTS-style JSONL file.

    Returns:
        (sentence1 list, sentence2 list, human scores as float array).

    Raises:
        DataError: a line without ``sentence1``/``sentence2`` strings or a numeric
            ``label``, naming the file and line; a file with no pairs.
    """
    if not Path(path).is_file():
        raise DataError(f"{path}: file not found")
    a, b, labels = [], [], []
    for lineno, obj in read_jsonl(path):
        if max_pairs is not None and len(a) >= max_pairs:
            break
        s1, s2, label = obj.get("sentence1"), obj.get("sentence2"), obj.get("label")
        if not isinstance(s1, str) or not isinstance(s2, str):
            raise DataError(f"{path}:{lineno}: no 'sentence1'/'sentence2' strings")
        if isinstance(label, bool) or not isinstance(label, int | float):
            raise DataError(f"{path}:{lineno}: 'label' is not a number")
        a.append(s1)
        b.append(s2)
        labels.append(float(label))
    if len(a) < 3:
        raise DataError(f"{path}: {len(a)} sentence pairs; at least 3 are needed")
    if len(set(labels)) < 2:
        raise DataError(f"{path}: needs at least two different human scores (a correlation)")
    return a, b, np.asarray(labels, dtype=np.float64)


def pair_agreement(embedder, a: list[str], b: list[str], human: np.ndarray, *, fit: bool) -> dict:
    """Spearman/Pearson between pair cosines and human scores, and the throughput."""
    from scipy.stats import pearsonr, spearmanr

    texts = a + b
    t0 = time.perf_counter()
    z = embedder.fit_encode(texts) if fit else embedder.encode(texts)
    seconds = time.perf_counter() - t0
    cos = np.sum(z[: len(a)] * z[len(a) :], axis=1, dtype=np.float64)
    return {
        "spearman": round(float(spearmanr(cos, human).statistic), 6),
        "pearson": round(float(pearsonr(cos, human).statistic), 6),
        "seconds": round(seconds, 3),
        "texts_per_s": round(len(texts) / max(seconds, 1e-9), 1),
    }


def check_embeddings(
    jsts: str,
    output: str,
    *,
    backends: list[str] = ("tfidf-svd", "sentence-transformers"),
    embedder: str | None = None,
    max_pairs: int = 300,
    model: str | None = None,
    svd_dim: int = 128,
    seed: int = 0,
) -> dict:
    """Measure each backend's agreement with human similarity on JSTS; write JSON.

    Args:
        jsts: JSTS JSONL (sentence1, sentence2, label).
        output: the JSON report (``embedding_check.json``).
        backends: backends to build and measure (config ``corpus.select.check.backends``).
        embedder: the pipeline's saved embedder state, measured as ``pipeline``.
        max_pairs: the first N pairs are used.
        model: the sentence-transformers model (config ``corpus.select.model``).
        svd_dim: tfidf-svd dimensions (config ``corpus.select.svd_dim``).
        seed: random state of the tfidf-svd fit.

    Returns:
        The report that was written.
    """
    from domainllm.corpus.embed import embedder_info, get_embedder, load_embedder

    if max_pairs < 3:
        raise PipelineError("config key 'corpus.select.check.max_pairs' must be >= 3")
    a, b, human = read_sts_pairs(jsts, max_pairs)
    results: dict[str, dict] = {}
    for name in backends:
        emb = get_embedder(name, model=model, svd_dim=svd_dim, seed=seed)
        r = pair_agreement(emb, a, b, human, fit=True)
        r["fitted_on"] = "the pairs' sentences" if name == "tfidf-svd" else "pre-trained"
        if getattr(emb, "model_path", None):
            r["model"] = str(model or "shipped all-MiniLM-L6-v2")
        results[name] = r
        log.info("check %s: Spearman %.4f on %d pairs", name, r["spearman"], len(a))
    report = {
        "data": str(jsts),
        "pairs": len(a),
        "metric": "Spearman rank correlation between pair cosine and human similarity (0-5)",
        "backends": results,
        "best": max(results, key=lambda k: results[k]["spearman"]) if results else None,
    }
    if embedder:
        info = embedder_info(embedder)
        r = pair_agreement(load_embedder(embedder), a, b, human, fit=False)
        r.update(info)
        r["fitted_on"] = "the corpus sample and the domain seeds (the selection's embedder)"
        report["pipeline"] = r
        log.info("check pipeline %s: Spearman %.4f", info["backend"], r["spearman"])
    write_json(report, output)
    return report
