"""Normalise, filter and deduplicate the document table: ``clean.parquet`` + ``stats.json``.

Text is NFKC-normalised (full-width ASCII to half-width, compatibility forms
folded) and its whitespace tidied. Each document then gets a detected language
(``lang_detected``, from its scripts) and goes through the quality filters of
``domainllm.corpus.quality`` (Gopher/C4-style rules that work for Japanese as
well as English; each names the drop reason), then exact deduplication of the
normalised text and, with ``dedup: near``, MinHash LSH near-duplicate removal
(``domainllm.corpus.dedup``). The first document of a duplicate group in table
order (sources in config order, documents in reading order) stays.

Every dropped document is counted under its reason, overall and per source,
and the first few of each reason are written to ``dropped_samples.jsonl``.
"""

from __future__ import annotations

import json
import logging
import re
import unicodedata
from collections import Counter
from pathlib import Path

from domainllm.corpus.quality import (
    DEFAULTS,
    FILTERS,
    LANGS,
    compute_metrics,
    drop_reasons,
    duplicate_line_fraction,
    quality_reason,
    symbol_ratio,
)
from domainllm.errors import DataError, PipelineError
from domainllm.io import write_json, write_parquet, write_text

__all__ = [
    "DUPLICATE",
    "NEAR_DUPLICATE",
    "clean_corpus",
    "duplicate_line_fraction",
    "normalize_text",
    "quality_reason",
    "symbol_ratio",
]

log = logging.getLogger(__name__)

DUPLICATE = "duplicate"
NEAR_DUPLICATE = "near_duplicate"
DEDUP_METHODS = ("none", "exact", "near")
SAMPLE_CHARS = 300
BATCH_CHARS = 4_000_000  # documents are measured in batches of about this many characters

_INLINE_WS = re.compile(r"[^\S\n]+")  # any whitespace except newline
_LINE_EDGES = re.compile(r" ?\n ?")
_BLANK_LINES = re.compile(r"\n{3,}")
# Zero-width and control characters that carry no text (tab/newline are whitespace).
_INVISIBLE = re.compile(
    r"[\u200b-\u200f\u2028\u2029\u2060-\u2064\ufeff\u00ad\x00-\x08\x0b\x0c\x0e-\x1f\x7f]"
)


def normalize_text(text: str) -> str:
    """NFKC, one space for any run of spaces, at most one blank line, no invisibles."""
    text = unicodedata.normalize("NFKC", text)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _INVISIBLE.sub("", text)
    text = _LINE_EDGES.sub("\n", _INLINE_WS.sub(" ", text))
    return _BLANK_LINES.sub("\n\n", text).strip()


def _check_params(p: dict, dedup: str, minhash: dict) -> None:
    if dedup not in DEDUP_METHODS:
        raise PipelineError(
            f"config key 'corpus.clean.dedup': unknown method '{dedup}' "
            f"(known: {', '.join(DEDUP_METHODS)})"
        )
    if p["min_chars"] > p["max_chars"]:
        raise PipelineError(
            f"config keys corpus.clean.min_chars ({p['min_chars']}) > "
            f"corpus.clean.max_chars ({p['max_chars']})"
        )
    for key in ("top_ngrams", "duplicate_ngrams"):
        sizes = [r["n"] for r in p[key]]
        if len(set(sizes)) != len(sizes):
            raise PipelineError(f"config key 'corpus.clean.{key}': repeated n in {sizes}")
    if not 0 < minhash["threshold"] <= 1:
        raise PipelineError("config key 'corpus.clean.minhash.threshold' must be in (0, 1]")


def _batches(lengths: list[int], max_chars: int):
    """Row ranges ``(start, stop)`` of about ``max_chars`` characters each."""
    start = total = 0
    for i, n in enumerate(lengths):
        if total and total + n > max_chars:
            yield start, i
            start, total = i, 0
        total += n
    if start < len(lengths):
        yield start, len(lengths)


def clean_corpus(
    docs: str,
    output: str,
    stats: str,
    dropped_samples: str | None = None,
    *,
    dedup: str = "exact",
    minhash: dict | None = None,
    dropped_samples_per_reason: int = 5,
    seed: int = 1234,
    **thresholds,
) -> None:
    """Normalise, filter and deduplicate ``docs`` (the ingest table) into ``output``.

    Args:
        docs: Parquet with id, source, title, text, lang.
        output: Parquet with those columns plus ``lang_detected`` (ja, en or
            other, from the characters' scripts), only kept documents, text and
            title normalised, in input order.
        stats: JSON ``{"input_docs", "kept_docs", "dropped": {reason: n},
            "per_source": {source: {"input", "kept", "dropped", "lang_detected"}},
            "params"}``; every reason appears (0 when nothing was dropped for it)
            so that input = kept + sum(dropped), overall and per source.
        dropped_samples: JSON Lines, up to ``dropped_samples_per_reason`` dropped
            documents per reason (first in table order): reason, source, id,
            ``duplicate_of`` for duplicates, and the first 300 characters
            (default: ``dropped_samples.jsonl`` next to ``stats``).
        dedup: ``"none"``; ``"exact"`` drops documents whose normalised text was
            seen before; ``"near"`` also drops MinHash near duplicates.
        minhash: ``{"num_perm", "ngram", "threshold"}`` of the near-duplicate
            index (config ``corpus.clean.minhash``); ``seed`` seeds its permutations.
        thresholds: the quality thresholds of config ``corpus.clean`` (see
            ``domainllm.corpus.quality.DEFAULTS``; missing ones take the default).

    Raises:
        PipelineError: an unknown key or inconsistent thresholds, or nothing kept.
        DataError: ``docs`` missing or without the expected columns.
    """
    import polars as pl
    from tqdm import tqdm

    from domainllm.corpus.dedup import NearDuplicateIndex, text_digest

    unknown = sorted(set(thresholds) - set(DEFAULTS))
    if unknown:
        raise PipelineError(f"config key 'corpus.clean': unknown key(s) {', '.join(unknown)}")
    params = {**DEFAULTS, **thresholds}
    mh = {"num_perm": 128, "ngram": 5, "threshold": 0.8, **(minhash or {})}
    _check_params(params, dedup, mh)
    if not Path(docs).exists():
        raise DataError(f"{docs}: file not found")
    df = pl.read_parquet(docs)
    cols = ["id", "source", "title", "text", "lang"]
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise DataError(f"{docs}: missing column(s) {', '.join(missing)}")
    samples_path = (
        Path(dropped_samples) if dropped_samples else Path(stats).with_name("dropped_samples.jsonl")
    )

    reasons = [*FILTERS, DUPLICATE, NEAR_DUPLICATE]
    dropped: Counter = Counter({r: 0 for r in reasons})
    per_source: dict[str, dict] = {}
    samples: dict[str, list[dict]] = {r: [] for r in reasons}
    seen: dict[bytes, str] = {}
    near = (
        NearDuplicateIndex(mh["num_perm"], mh["ngram"], mh["threshold"], seed)
        if dedup == "near"
        else None
    )
    keep_rows: list[int] = []
    texts: list[str] = []
    detected: list[str] = []

    ids, sources, langs = df["id"].to_list(), df["source"].to_list(), df["lang"].to_list()
    raw = df["text"].to_list()
    lengths = [len(t or "") for t in raw]
    bar = tqdm(total=df.height, desc="clean", mininterval=5)
    for start, stop in _batches(lengths, BATCH_CHARS):
        norm = [normalize_text(t or "") for t in raw[start:stop]]
        metrics = compute_metrics(norm, langs[start:stop], params)
        why = drop_reasons(metrics, params)
        lang_det = [LANGS[i] for i in metrics["lang_detected"]]
        # Exact duplicates, then near duplicates of what is left, in table order.
        dup_of: dict[int, str] = {}
        digests: dict[int, bytes] = {}
        for j, text in enumerate(norm):
            if why[j] is None and dedup != "none":
                digest = digests[j] = text_digest(text)
                if digest in seen:
                    why[j], dup_of[j] = DUPLICATE, seen[digest]
                else:
                    seen[digest] = ids[start + j]
        if near is not None:
            todo = [j for j in range(len(norm)) if why[j] is None]
            for j in todo:
                first = near.add(ids[start + j], near.signature(norm[j]))
                if first is not None:
                    why[j], dup_of[j] = NEAR_DUPLICATE, first
                    seen[digests[j]] = first  # later copies point to the document kept
        for j, text in enumerate(norm):
            i = start + j
            ps = per_source.setdefault(
                sources[i],
                {
                    "input": 0,
                    "kept": 0,
                    "dropped": dict.fromkeys(reasons, 0),
                    "lang_detected": dict.fromkeys(LANGS, 0),
                },
            )
            ps["input"] += 1
            ps["lang_detected"][lang_det[j]] += 1
            reason = why[j]
            if reason is not None:
                dropped[reason] += 1
                ps["dropped"][reason] += 1
                if len(samples[reason]) < dropped_samples_per_reason:
                    sample = {"reason": reason, "source": sources[i], "id": ids[i]}
                    if j in dup_of:
                        sample["duplicate_of"] = dup_of[j]
                    sample["text"] = text[:SAMPLE_CHARS]
                    samples[reason].append(sample)
                continue
            ps["kept"] += 1
            keep_rows.append(i)
            texts.append(text)
            detected.append(lang_det[j])
        bar.update(stop - start)
    bar.close()

    out = df.select(cols)[keep_rows]
    # Titles go through the same normalisation so that later stages see one form.
    titles = [normalize_text(t or "") for t in out["title"]]
    out = out.with_columns(
        pl.Series("text", texts, dtype=pl.String),
        pl.Series("title", titles, dtype=pl.String),
        pl.Series("lang_detected", detected, dtype=pl.String),
    )
    report = {
        "input_docs": df.height,
        "kept_docs": out.height,
        "dropped": dict(dropped),
        "per_source": per_source,
        "params": {**params, "dedup": dedup, "minhash": mh, "seed": seed},
    }
    if out.height == 0:
        raise PipelineError(
            f"{docs}: every document was dropped by cleaning ({dict(dropped)}); "
            "check the config keys corpus.clean.*"
        )
    lines = [json.dumps(s, ensure_ascii=False) for r in reasons for s in samples[r]]
    write_parquet(out, output)
    write_json(report, stats)
    write_text("".join(line + "\n" for line in lines), samples_path)
    log.info(
        "clean: %d -> %d documents, dropped %s",
        df.height,
        out.height,
        {k: v for k, v in dropped.items() if v},
    )
