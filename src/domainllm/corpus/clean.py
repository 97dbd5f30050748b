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
import tempfile
import unicodedata
from collections import Counter
from pathlib import Path

import numpy as np

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
from domainllm.io import atomic_path, write_json, write_text

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
READ_ROWS = 4096  # documents read from Parquet at a time
ROW_GROUP_ROWS = 8192  # rows per Parquet row group written (bounds a reader's memory)

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
    bands = minhash.get("bands")
    if bands is not None and not 1 <= bands <= minhash["num_perm"]:
        raise PipelineError(
            f"config key 'corpus.clean.minhash.bands': {bands} is not in "
            f"[1, num_perm={minhash['num_perm']}]"
        )


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


def _new_source_stats(reasons: list[str]) -> dict:
    return {
        "input": 0,
        "kept": 0,
        "dropped": dict.fromkeys(reasons, 0),
        "lang_detected": dict.fromkeys(LANGS, 0),
    }


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

    Streams: the table is read in row batches, the filter survivors go to a
    temporary Parquet file and their dedup keys to ``DuplicateFinder``'s files
    (in a temporary folder next to ``output``); a second pass over the
    survivors drops the duplicates. Memory does not grow with the corpus
    except for the duplicate finder's sorts (about 40 bytes per document, one
    key column at a time; see ``domainllm.corpus.dedup``).

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
            seen before; ``"near"`` also drops MinHash near duplicates (groups
            of documents linked by pairs at or above the threshold; the first
            of a group stays).
        minhash: ``{"num_perm", "ngram", "threshold", "bands"}`` of the
            near-duplicate search (config ``corpus.clean.minhash``); ``seed``
            seeds its permutations.
        thresholds: the quality thresholds of config ``corpus.clean`` (see
            ``domainllm.corpus.quality.DEFAULTS``; missing ones take the default).

    Raises:
        PipelineError: an unknown key or inconsistent thresholds, or nothing kept.
        DataError: ``docs`` missing, unreadable or without the expected columns.
    """
    import polars as pl
    import pyarrow.parquet as pq
    from tqdm import tqdm

    from domainllm.corpus.dedup import EXACT, NEAR, DuplicateFinder

    unknown = sorted(set(thresholds) - set(DEFAULTS))
    if unknown:
        raise PipelineError(f"config key 'corpus.clean': unknown key(s) {', '.join(unknown)}")
    params = {**DEFAULTS, **thresholds}
    mh = {"num_perm": 128, "ngram": 5, "threshold": 0.8, "bands": None, **(minhash or {})}
    _check_params(params, dedup, mh)
    if not Path(docs).exists():
        raise DataError(f"{docs}: file not found")
    try:
        # pre_buffer off: with it, pyarrow keeps the buffered column chunks of every
        # row group read so far (resident memory grew with the file: 353 MB vs 131 MB
        # for 1M short documents).
        table = pq.ParquetFile(docs, pre_buffer=False)
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise DataError(f"{docs}: not a readable Parquet file ({e})") from e
    cols = ["id", "source", "title", "text", "lang"]
    missing = [c for c in cols if c not in table.schema_arrow.names]
    if missing:
        raise DataError(f"{docs}: missing column(s) {', '.join(missing)}")
    samples_path = (
        Path(dropped_samples) if dropped_samples else Path(stats).with_name("dropped_samples.jsonl")
    )

    reasons = [*FILTERS, DUPLICATE, NEAR_DUPLICATE]
    dropped: Counter = Counter({r: 0 for r in reasons})
    per_source: dict[str, dict] = {}
    samples: dict[str, list[dict]] = {r: [] for r in reasons}
    n_input = n_kept = 0
    out_path = Path(output)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_path.parent, prefix=f".{out_path.name}.work-") as work:
        finder = (
            DuplicateFinder(
                work,
                near=dedup == "near",
                num_perm=mh["num_perm"],
                ngram=mh["ngram"],
                threshold=mh["threshold"],
                seed=seed,
                bands=mh["bands"],
            )
            if dedup != "none"
            else None
        )
        survivors = Path(work) / "survivors.parquet"
        writer = None
        bar = tqdm(total=table.metadata.num_rows, desc="clean: filter", mininterval=5)
        for record_batch in table.iter_batches(batch_size=READ_ROWS, columns=cols):
            batch = pl.from_arrow(record_batch)
            raw = batch["text"].to_list()
            sources, langs = batch["source"].to_list(), batch["lang"].to_list()
            for start, stop in _batches([len(t or "") for t in raw], BATCH_CHARS):
                norm = [normalize_text(t or "") for t in raw[start:stop]]
                metrics = compute_metrics(norm, langs[start:stop], params)
                why = drop_reasons(metrics, params)
                lang_det = [LANGS[i] for i in metrics["lang_detected"]]
                keep = []
                for j, reason in enumerate(why):
                    i = start + j
                    ps = per_source.get(sources[i]) or per_source.setdefault(
                        sources[i], _new_source_stats(reasons)
                    )
                    ps["input"] += 1
                    ps["lang_detected"][lang_det[j]] += 1
                    if reason is None:
                        keep.append(j)
                        continue
                    dropped[reason] += 1
                    ps["dropped"][reason] += 1
                    if len(samples[reason]) < dropped_samples_per_reason:
                        samples[reason].append(
                            {
                                "reason": reason,
                                "source": sources[i],
                                "id": batch["id"][i],
                                "text": norm[j][:SAMPLE_CHARS],
                            }
                        )
                rows = [n_input + start + j for j in keep]
                texts = [norm[j] for j in keep]
                part = batch[start:stop][keep].with_columns(
                    pl.Series("text", texts, dtype=pl.String),
                    pl.Series(
                        "title",
                        [normalize_text(t or "") for t in batch["title"][start:stop][keep]],
                        dtype=pl.String,
                    ),
                    pl.Series("lang_detected", [lang_det[j] for j in keep], dtype=pl.String),
                    pl.Series("row", rows, dtype=pl.Int64),
                )
                if finder is not None and rows:
                    finder.add(rows, texts)
                arrow = part.to_arrow()
                if writer is None:
                    writer = pq.ParquetWriter(survivors, arrow.schema, compression="zstd")
                writer.write_table(arrow, row_group_size=ROW_GROUP_ROWS)
            n_input += batch.height
            bar.update(batch.height)
        bar.close()
        if writer is not None:
            writer.close()
        dups = finder.find() if finder is not None else None
        if dups is not None:
            log.info(
                "clean: %d exact and %d near duplicates",
                int((dups.reason == EXACT).sum()),
                int((dups.reason == NEAR).sum()),
            )

        # The duplicates that make it into the samples, and the kept rows they name.
        wanted: dict[int, str] = {}
        if dups is not None:
            for code in (EXACT, NEAR):
                firsts = dups.first[dups.reason == code][:dropped_samples_per_reason]
                wanted.update({int(r): "" for r in firsts})
        reason_name = {EXACT: DUPLICATE, NEAR: NEAR_DUPLICATE}
        with atomic_path(out_path) as tmp:
            out_writer = None
            if writer is not None:
                surv = pq.ParquetFile(survivors, pre_buffer=False)
                bar = tqdm(total=surv.metadata.num_rows, desc="clean: dedup", mininterval=5)
                for record_batch in surv.iter_batches(batch_size=READ_ROWS):
                    batch = pl.from_arrow(record_batch)
                    rows = batch["row"].to_numpy()
                    for r, doc_id in zip(rows.tolist(), batch["id"].to_list(), strict=True):
                        if r in wanted:
                            wanted[r] = doc_id
                    if dups is not None:
                        code, first = dups.lookup(rows)
                    else:
                        code, first = np.zeros(len(rows), np.uint8), np.full(len(rows), -1)
                    for j in np.flatnonzero(code).tolist():
                        reason = reason_name[int(code[j])]
                        src = batch["source"][j]
                        dropped[reason] += 1
                        per_source[src]["dropped"][reason] += 1
                        if len(samples[reason]) < dropped_samples_per_reason:
                            samples[reason].append(
                                {
                                    "reason": reason,
                                    "source": src,
                                    "id": batch["id"][j],
                                    "duplicate_of": wanted[int(first[j])],
                                    "text": batch["text"][j][:SAMPLE_CHARS],
                                }
                            )
                    kept = batch.filter(pl.Series(code == 0)).select([*cols, "lang_detected"])
                    for src, n in kept.group_by("source").len().iter_rows():
                        per_source[src]["kept"] += n
                    n_kept += kept.height
                    if kept.height:
                        arrow = kept.to_arrow()
                        if out_writer is None:
                            out_writer = pq.ParquetWriter(tmp, arrow.schema, compression="zstd")
                        out_writer.write_table(arrow, row_group_size=ROW_GROUP_ROWS)
                    bar.update(batch.height)
                bar.close()
            if out_writer is not None:
                out_writer.close()
            if n_kept == 0:
                why = {reason: n for reason, n in dropped.items() if n}
                raise PipelineError(
                    f"{docs}: every document was dropped by cleaning ({n_input} of {n_input}; "
                    f"per reason: {why}); check the config keys corpus.clean.*"
                )
    report = {
        "input_docs": n_input,
        "kept_docs": n_kept,
        "dropped": dict(dropped),
        "per_source": per_source,
        "params": {**params, "dedup": dedup, "minhash": mh, "seed": seed},
    }
    lines = [json.dumps(s, ensure_ascii=False) for r in reasons for s in samples[r]]
    write_json(report, stats)
    write_text("".join(line + "\n" for line in lines), samples_path)
    log.info(
        "clean: %d -> %d documents, dropped %s",
        n_input,
        n_kept,
        {k: v for k, v in dropped.items() if v},
    )
