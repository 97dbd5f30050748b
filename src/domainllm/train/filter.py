"""Quality filtering of the SFT candidates: feedback labels, quality score, deduplication.

Each candidate is checked in this order, and the first reason that applies is
the one it is dropped for (counted overall and per source):

1. ``empty``: an empty instruction or output (after normalisation).
2. ``feedback_<label>``: its feedback label is listed in ``drop_feedback``
   (``bad``; ``none`` stands for examples without feedback, e.g. curated sets).
3. ``duplicate``: exact duplicate of an earlier kept example. The key is
   instruction and output, each NFKC-normalised with whitespace runs collapsed
   to one space and ends stripped (case kept); the first occurrence, in
   candidate order (ELYZA, then the configured sources in order), is kept.
4. ``low_quality``: the quality scorer's P(good) is below the threshold of its
   source: the ``drop_quantile`` quantile of that source's remaining scores,
   raised to ``min_score`` when that is set. Per source, because a scorer trained
   on English preference data scores Japanese and English sets on different
   scales; one global cut would mostly drop one language.

The scorer is the trained feedback evaluator of domainllm.evaluate.feedback
(LightGBM over TF-IDF and text features, trained on HH-RLHF chosen/rejected
as the stand-in for product feedback); this module only loads and applies it.
Its held-out AUC (from the evaluator folder's metrics.json) goes into the
statistics, with its AUC against the candidates' own feedback labels when any
are labelled. The first few dropped examples of each reason go to a JSON Lines
file, as the corpus cleaning stage does.
"""

from __future__ import annotations

import json
import logging
import unicodedata
from pathlib import Path

from domainllm.errors import DataError, PipelineError
from domainllm.io import read_json, write_json, write_parquet, write_text

log = logging.getLogger(__name__)

REQUIRED = ("id", "source", "instruction", "output")
EMPTY, DUPLICATE, LOW_QUALITY = "empty", "duplicate", "low_quality"
NO_FEEDBACK = "none"
FEEDBACK_VALUES = ("good", "bad", NO_FEEDBACK)
SAMPLE_CHARS = 300
QUANTILES = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)
DEDUP_METHOD = (
    "exact: instruction + output, NFKC, whitespace runs collapsed to one space, ends stripped, "
    "case kept; the first occurrence in candidate order is kept"
)


def evaluator_text(instruction: str, output: str) -> str:
    """One example in the evaluator's layout (:func:`~domainllm.evaluate.feedback.format_dialogue`).

    Stripped like the HH-RLHF dialogues the evaluator was trained on
    (domainllm.data.feedback strips them), so it reads "Human: ...".
    """
    from domainllm.evaluate.feedback import format_dialogue

    return format_dialogue(instruction.strip(), output.strip()).strip()


def normalize(text: str) -> str:
    """The deduplication form of a text: NFKC, whitespace collapsed, ends stripped."""
    return " ".join(unicodedata.normalize("NFKC", text).split())


def _reasons(drop_feedback) -> list[str]:
    return [EMPTY, *(f"feedback_{label}" for label in drop_feedback), DUPLICATE, LOW_QUALITY]


def _scorer_stats(evaluator: str, scores, feedback: list[str | None], prompts: list[str]) -> dict:
    """The scorer's held-out metrics (evaluator metrics.json) and its AUC on labelled candidates."""
    import numpy as np

    from domainllm.evaluate.feedback import classification_metrics

    out: dict = {"path": str(Path(evaluator)), "heldout": None, "feedback_labels": None}
    metrics_path = Path(evaluator) / "metrics.json"
    if metrics_path.is_file():
        m = read_json(metrics_path)
        test = m.get("test", {})
        out["kind"] = m.get("kind")
        out["heldout"] = {
            k: test.get(k) for k in ("auc", "auc_se", "paired_accuracy", "n_pairs", "n_texts")
        }
    else:
        log.warning("%s: no metrics.json; the scorer's held-out AUC is unknown", evaluator)
    labelled = [
        i for i, f in enumerate(feedback) if f in ("good", "bad") and not np.isnan(scores[i])
    ]
    labels = np.asarray([1 if feedback[i] == "good" else 0 for i in labelled])
    if labelled and 0 < labels.sum() < len(labels):
        # Two answers to the same prompt form a pair (paired accuracy).
        pair_of: dict[str, int] = {}
        pair_ids = np.asarray([pair_of.setdefault(prompts[i], len(pair_of)) for i in labelled])
        out["feedback_labels"] = classification_metrics(pair_ids, labels, scores[labelled])
    return out


def filter_sft(
    candidates: str,
    evaluator: str,
    output: str,
    stats: str,
    *,
    dropped_samples: str | None = None,
    drop_quantile: float,
    min_score: float | None = None,
    drop_feedback: list[str] | tuple[str, ...] = ("bad",),
    samples_per_reason: int = 5,
) -> dict:
    """Filter the SFT candidates; write the training set, statistics and dropped samples.

    Args:
        candidates: Parquet (id, source, instruction, output[, feedback, ...]).
        evaluator: trained evaluator folder (``load_evaluator(path).score(texts)``,
            metrics.json with the held-out ``test`` metrics).
        output: Parquet of kept examples: the candidate columns + ``quality`` (P(good)).
        stats: JSON ``{n_in, n_kept, dropped: {reason: n}, per_source, thresholds,
            score_quantiles, scorer: {heldout: {auc, ...}, feedback_labels}, dedup}``.
        dropped_samples: JSON Lines of up to ``samples_per_reason`` dropped examples per
            reason (default: ``sft_dropped_samples.jsonl`` next to ``stats``).
        drop_quantile: per source, examples scoring below this quantile of the
            source's scores are dropped (0: no quantile cut).
        min_score: absolute P(good) below which examples are dropped (None: none).
        drop_feedback: feedback labels (``good``, ``bad``, ``none``) whose examples
            are dropped.
        samples_per_reason: dropped examples written per reason.

    Returns:
        The statistics written to ``stats``.

    Raises:
        DataError: missing columns or unknown feedback values; PipelineError: a bad
            setting (config ``sft.filter.*``), or nothing left to train on.
    """
    import numpy as np
    import polars as pl

    from domainllm.evaluate.feedback import load_evaluator

    if not 0.0 <= drop_quantile < 1.0:
        raise PipelineError(f"config key 'sft.filter.drop_quantile': {drop_quantile} not in [0, 1)")
    if min_score is not None and not 0.0 <= min_score <= 1.0:
        raise PipelineError(f"config key 'sft.filter.min_score': {min_score} not in [0, 1]")
    unknown = sorted(set(drop_feedback) - set(FEEDBACK_VALUES))
    if unknown:
        raise PipelineError(
            f"config key 'sft.filter.drop_feedback': unknown label(s) {', '.join(unknown)} "
            f"(known: {', '.join(FEEDBACK_VALUES)})"
        )
    drop_feedback = list(dict.fromkeys(drop_feedback))
    df = pl.read_parquet(candidates)
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise DataError(f"{candidates}: missing column(s) {', '.join(missing)}")
    if "feedback" not in df.columns:
        df = df.with_columns(pl.lit(None, dtype=pl.String).alias("feedback"))
    df = df.with_columns(pl.col("instruction").fill_null(""), pl.col("output").fill_null(""))
    bad_fb = df.filter(
        pl.col("feedback").is_not_null() & ~pl.col("feedback").is_in(["good", "bad"])
    )
    if bad_fb.height:
        raise DataError(
            f"{candidates}: feedback must be good, bad or null; row id {bad_fb['id'][0]} has "
            f"{bad_fb['feedback'][0]!r}"
        )
    n_in = df.height
    ids, sources = df["id"].to_list(), df["source"].to_list()
    instructions, outputs = df["instruction"].to_list(), df["output"].to_list()
    feedback = df["feedback"].to_list()
    keys = [(normalize(i), normalize(o)) for i, o in zip(instructions, outputs, strict=True)]

    # Score every non-empty example (bad-labelled ones too: they measure the scorer).
    scored = [i for i, k in enumerate(keys) if k[0] and k[1]]
    if not scored:
        raise PipelineError(f"{candidates}: no example has both an instruction and an output")
    texts = [evaluator_text(instructions[i], outputs[i]) for i in scored]
    got = np.asarray(load_evaluator(evaluator).score(texts), dtype=np.float64)
    if got.shape != (len(scored),) or not np.all(np.isfinite(got)):
        raise PipelineError(
            f"{evaluator}: evaluator returned {got.shape} scores for {len(scored)} texts "
            "(or non-finite values)"
        )
    scores = np.full(n_in, np.nan)
    scores[scored] = got

    reasons: list[str | None] = [None] * n_in
    first_of: dict[tuple[str, str], int] = {}
    duplicate_of: dict[int, str] = {}
    for i, key in enumerate(keys):
        label = feedback[i] or NO_FEEDBACK
        if not key[0] or not key[1]:
            reasons[i] = EMPTY
        elif label in drop_feedback:
            reasons[i] = f"feedback_{label}"
        elif key in first_of:
            reasons[i] = DUPLICATE
            duplicate_of[i] = ids[first_of[key]]
        else:
            first_of[key] = i

    thresholds: dict[str, float | None] = {}
    for src in dict.fromkeys(sources):
        rest = [i for i in range(n_in) if sources[i] == src and reasons[i] is None]
        if not rest:
            thresholds[src] = None
            continue
        cut = float(np.quantile(scores[rest], drop_quantile)) if drop_quantile > 0 else 0.0
        if min_score is not None:
            cut = max(cut, float(min_score))
        thresholds[src] = cut
        for i in rest:
            if scores[i] < cut:
                reasons[i] = LOW_QUALITY

    keep = [i for i in range(n_in) if reasons[i] is None]
    if not keep:
        raise PipelineError(
            f"{candidates}: every example was filtered out (check config keys sft.filter.*)"
        )
    kept = df[keep].with_columns(pl.Series("quality", scores[keep], dtype=pl.Float64))

    all_reasons = _reasons(drop_feedback)
    dropped = {r: reasons.count(r) for r in all_reasons}
    per_source = {}
    for src in dict.fromkeys(sources):
        rows = [i for i in range(n_in) if sources[i] == src]
        per_source[src] = {
            "n_in": len(rows),
            "n_kept": sum(reasons[i] is None for i in rows),
            "dropped": {r: sum(reasons[i] == r for i in rows) for r in all_reasons},
            "feedback": {f: sum((feedback[i] or NO_FEEDBACK) == f for i in rows)
                         for f in FEEDBACK_VALUES},
            "threshold": thresholds[src],
        }  # fmt: skip

    samples: dict[str, list[dict]] = {r: [] for r in all_reasons}
    for i, r in enumerate(reasons):
        if r is None or len(samples[r]) >= samples_per_reason:
            continue
        s = {"reason": r, "source": sources[i], "id": ids[i]}
        if r == DUPLICATE:
            s["duplicate_of"] = duplicate_of[i]
        if not np.isnan(scores[i]):
            s["quality"] = float(scores[i])
        if r == LOW_QUALITY:
            s["threshold"] = thresholds[sources[i]]
        s["feedback"] = feedback[i]
        s["instruction"] = instructions[i][:SAMPLE_CHARS]
        s["output"] = outputs[i][:SAMPLE_CHARS]
        samples[r].append(s)
    samples_path = (
        Path(dropped_samples)
        if dropped_samples
        else Path(stats).with_name("sft_dropped_samples.jsonl")
    )

    kept_scores = scores[keep]
    result = {
        "n_in": n_in,
        "n_kept": kept.height,
        "dropped": dropped,
        "per_source": per_source,
        "thresholds": {
            "drop_quantile": drop_quantile,
            "min_score": min_score,
            "drop_feedback": drop_feedback,
            "per_source": thresholds,
        },
        "score_quantiles": {
            "scored": {str(q): float(np.quantile(got, q)) for q in QUANTILES},
            "kept": {str(q): float(np.quantile(kept_scores, q)) for q in QUANTILES},
        },
        "scorer": _scorer_stats(evaluator, scores, feedback, [k[0] for k in keys]),
        "dedup": DEDUP_METHOD,
        "dropped_samples": str(samples_path),
    }  # fmt: skip
    lines = [json.dumps(s, ensure_ascii=False) for r in all_reasons for s in samples[r]]
    write_parquet(kept, output)
    write_json(result, stats)
    write_text("".join(line + "\n" for line in lines), samples_path)
    heldout = result["scorer"]["heldout"] or {}
    log.info(
        "SFT filter: kept %d of %d (dropped %s; scorer held-out AUC %s)",
        kept.height, n_in, dropped, heldout.get("auc"),
    )  # fmt: skip
    return result
