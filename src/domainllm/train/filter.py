"""Quality filtering of the SFT candidates with the trained feedback evaluator.

Empty examples and exact duplicates go first; the evaluator (trained on human
preference labels, see domainllm.evaluate.feedback) then scores each remaining
"instruction + answer" dialogue, and examples below the ``drop_quantile`` of the
scores are dropped as low quality. Every drop is counted by reason.
"""

from __future__ import annotations

import logging
from pathlib import Path

from domainllm.errors import DataError, PipelineError
from domainllm.io import write_json, write_parquet

log = logging.getLogger(__name__)

REQUIRED = ("id", "source", "instruction", "output")


def evaluator_text(instruction: str, output: str) -> str:
    """One example as the evaluator's training texts look (a stripped HH-RLHF dialogue)."""
    return f"Human: {instruction.strip()}\n\nAssistant: {output.strip()}"


def _norm(text: str) -> str:
    return " ".join(text.split())


def filter_sft(
    candidates: str,
    evaluator: str,
    output: str,
    stats: str,
    *,
    drop_quantile: float,
) -> dict:
    """Score, filter and write the SFT training set.

    Args:
        candidates: Parquet (id, source, instruction, output).
        evaluator: trained evaluator folder (``load_evaluator(path).score(texts)``).
        output: Parquet of kept examples: the candidate columns + ``quality`` (P(good)).
        stats: JSON ``{n_in, n_kept, dropped: {reason: n}, threshold, ...}``.
        drop_quantile: examples scoring below this quantile of the scores are
            dropped (0 keeps all scored examples).

    Returns:
        The statistics written to ``stats``.

    Raises:
        DataError: missing columns; PipelineError: nothing left to train on.
    """
    import numpy as np
    import polars as pl

    from domainllm.evaluate.feedback import load_evaluator

    if not 0.0 <= drop_quantile < 1.0:
        raise PipelineError(f"sft.filter.drop_quantile={drop_quantile} must be in [0, 1)")
    df = pl.read_parquet(candidates)
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise DataError(f"{candidates}: missing column(s) {', '.join(missing)}")
    n_in = df.height
    df = df.with_columns(pl.col("instruction").fill_null(""), pl.col("output").fill_null(""))

    reasons: list[str | None] = []
    seen: set[tuple[str, str]] = set()
    for ins, out in zip(df["instruction"].to_list(), df["output"].to_list(), strict=True):
        key = (_norm(ins), _norm(out))
        if not key[0] or not key[1]:
            reasons.append("empty")
        elif key in seen:
            reasons.append("duplicate")
        else:
            seen.add(key)
            reasons.append(None)
    df = df.with_columns(pl.Series("_reason", reasons, dtype=pl.String))

    rest = df.filter(pl.col("_reason").is_null())
    if rest.height == 0:
        raise PipelineError(f"{candidates}: no non-empty, distinct examples to score")
    texts = [
        evaluator_text(i, o)
        for i, o in zip(rest["instruction"].to_list(), rest["output"].to_list(), strict=True)
    ]
    scores = np.asarray(load_evaluator(evaluator).score(texts), dtype=np.float64)
    if scores.shape != (rest.height,) or not np.all(np.isfinite(scores)):
        raise PipelineError(
            f"{evaluator}: evaluator returned {scores.shape} scores for {rest.height} texts "
            "(or non-finite values)"
        )
    threshold = float(np.quantile(scores, drop_quantile))
    rest = rest.with_columns(pl.Series("quality", scores, dtype=pl.Float64))
    low = rest["quality"] < threshold
    kept = rest.filter(~low).drop("_reason")
    if kept.height == 0:
        raise PipelineError(f"{candidates}: every example was filtered out")

    dropped = {
        "empty": reasons.count("empty"),
        "duplicate": reasons.count("duplicate"),
        "low_quality": int(low.sum()),
    }
    per_source = {
        s: {
            "n_in": int((df["source"] == s).sum()),
            "n_kept": int((kept["source"] == s).sum()),
        }
        for s in sorted(df["source"].unique().to_list())
    }
    result = {
        "n_in": n_in,
        "n_kept": kept.height,
        "dropped": dropped,
        "threshold": threshold,
        "drop_quantile": drop_quantile,
        "score_quantiles": {
            str(q): float(np.quantile(scores, q)) for q in (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)
        },
        "per_source": per_source,
        "evaluator": str(Path(evaluator)),
    }
    write_parquet(kept, output)
    write_json(result, stats)
    log.info(
        "SFT filter: kept %d of %d (dropped %s; threshold %.4f)",
        kept.height,
        n_in,
        dropped,
        threshold,
    )
    return result
