"""Normalise, filter and deduplicate the document table: ``clean.parquet`` + ``stats.json``.

Text is NFKC-normalised (full-width ASCII to half-width, compatibility forms
folded) and its whitespace tidied. Quality filters are registered by name and
return a drop reason or ``None``; they are written to work for Japanese (no
word counts: Japanese has no spaces) as well as English. Exact deduplication
runs on the normalised text, after the filters.
"""

from __future__ import annotations

import hashlib
import logging
import re
import unicodedata
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from domainllm.errors import DataError, PipelineError
from domainllm.io import write_json, write_parquet

log = logging.getLogger(__name__)

DUPLICATE = "duplicate"

_INLINE_WS = re.compile(r"[^\S\n]+")  # any whitespace except newline
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
    text = "\n".join(_INLINE_WS.sub(" ", line).strip() for line in text.split("\n"))
    return _BLANK_LINES.sub("\n\n", text).strip()


def symbol_ratio(text: str) -> float:
    """Share of non-space characters that are punctuation or symbols (Unicode P*, S*)."""
    n = sym = 0
    for ch in text:
        if ch.isspace():
            continue
        n += 1
        if unicodedata.category(ch)[0] in "PS":
            sym += 1
    return sym / n if n else 0.0


def duplicate_line_fraction(text: str) -> float:
    """Share of non-blank lines that repeat an earlier line (Gopher's repetition rule)."""
    lines = [line for line in text.split("\n") if line.strip()]
    if len(lines) < 2:
        return 0.0
    return (len(lines) - len(set(lines))) / len(lines)


Filter = Callable[[str, dict], "str | None"]
FILTERS: dict[str, Filter] = {}


def register_filter(name: str) -> Callable[[Filter], Filter]:
    """Register ``fn(text, params) -> reason | None``; filters run in registration order."""

    def deco(fn: Filter) -> Filter:
        FILTERS[name] = fn
        return fn

    return deco


@register_filter("too_short")
def _too_short(text: str, p: dict) -> str | None:
    return "too_short" if len(text) < p["min_chars"] else None


@register_filter("too_long")
def _too_long(text: str, p: dict) -> str | None:
    return "too_long" if len(text) > p["max_chars"] else None


@register_filter("symbol_ratio")
def _symbols(text: str, p: dict) -> str | None:
    return "symbol_ratio" if symbol_ratio(text) > p["max_symbol_ratio"] else None


@register_filter("duplicate_lines")
def _dup_lines(text: str, p: dict) -> str | None:
    frac = duplicate_line_fraction(text)
    return "duplicate_lines" if frac > p["max_duplicate_line_fraction"] else None


def quality_reason(text: str, params: dict) -> str | None:
    """The first filter's reason to drop ``text`` (already normalised), or ``None``."""
    for fn in FILTERS.values():
        reason = fn(text, params)
        if reason:
            return reason
    return None


def clean_corpus(
    docs: str,
    output: str,
    stats: str,
    *,
    min_chars: int = 20,
    max_chars: int = 200_000,
    max_symbol_ratio: float = 0.3,
    max_duplicate_line_fraction: float = 0.3,
    dedup: str = "exact",
) -> None:
    """Normalise and filter ``docs`` (the ingest table) into ``output``.

    Args:
        docs: Parquet with id, source, title, text, lang.
        output: Parquet with the same columns, only kept documents, text normalised.
        stats: JSON ``{"input_docs", "kept_docs", "dropped": {reason: n},
            "per_source": {source: {"input", "kept", "dropped"}}}``; every reason
            appears (0 when nothing was dropped for it) so the counts add up.
        min_chars, max_chars, max_symbol_ratio, max_duplicate_line_fraction: the
            quality thresholds (config ``corpus.clean.*``).
        dedup: ``"exact"`` drops documents whose normalised text was seen before
            (the first one in table order stays); ``"none"`` keeps them.
    """
    import polars as pl
    from tqdm import tqdm

    if dedup not in ("none", "exact"):
        raise PipelineError(f"config key 'corpus.clean.dedup': unknown method '{dedup}'")
    if min_chars > max_chars:
        raise PipelineError(
            f"config keys corpus.clean.min_chars ({min_chars}) > "
            f"corpus.clean.max_chars ({max_chars})"
        )
    params = {
        "min_chars": min_chars,
        "max_chars": max_chars,
        "max_symbol_ratio": max_symbol_ratio,
        "max_duplicate_line_fraction": max_duplicate_line_fraction,
    }
    if not Path(docs).exists():
        raise DataError(f"{docs}: file not found")
    df = pl.read_parquet(docs)
    cols = ["id", "source", "title", "text", "lang"]
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise DataError(f"{docs}: missing column(s) {', '.join(missing)}")

    reasons = [*FILTERS, DUPLICATE]
    dropped: Counter = Counter({r: 0 for r in reasons})
    per_source: dict[str, dict] = {}
    seen: set[bytes] = set()
    keep_rows: list[int] = []
    texts: list[str] = []
    for i, (source, text) in enumerate(
        tqdm(
            zip(df["source"], df["text"], strict=True), total=df.height, desc="clean", mininterval=5
        )
    ):
        ps = per_source.setdefault(
            source, {"input": 0, "kept": 0, "dropped": dict.fromkeys(reasons, 0)}
        )
        ps["input"] += 1
        norm = normalize_text(text or "")
        reason = quality_reason(norm, params)
        if reason is None and dedup == "exact":
            digest = hashlib.blake2b(norm.encode("utf-8"), digest_size=16).digest()
            if digest in seen:
                reason = DUPLICATE
            else:
                seen.add(digest)
        if reason is not None:
            dropped[reason] += 1
            ps["dropped"][reason] += 1
            continue
        ps["kept"] += 1
        keep_rows.append(i)
        texts.append(norm)

    out = df.select(cols)[keep_rows]
    # Titles go through the same normalisation so that later stages see one form.
    titles = [normalize_text(t or "") for t in out["title"]]
    out = out.with_columns(
        pl.Series("text", texts, dtype=pl.String), pl.Series("title", titles, dtype=pl.String)
    )
    report = {
        "input_docs": df.height,
        "kept_docs": out.height,
        "dropped": dict(dropped),
        "per_source": per_source,
    }
    if out.height == 0:
        raise PipelineError(
            f"{docs}: every document was dropped by cleaning ({dict(dropped)}); "
            "check the config keys corpus.clean.*"
        )
    write_parquet(out, output)
    write_json(report, stats)
    log.info("clean: %d -> %d documents, dropped %s", df.height, out.height, dict(dropped))
