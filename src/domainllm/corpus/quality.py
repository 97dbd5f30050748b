"""Document quality heuristics for Japanese and English, in the manner of Gopher and C4.

Every heuristic is a per-document metric (computed for a batch of documents at
once, vectorised with numpy and polars) and a filter registered under the name
of the drop reason it gives, with its threshold in ``corpus.clean`` (defaults in
``DEFAULTS``). Filters run in registration order; the first that fires names
the reason.

Japanese has no spaces, so the repetition rules count *character* n-grams for
``ja`` (and ``other``) and *word* n-grams for ``en``; line rules count the
Japanese sentence enders 。！？ as terminal punctuation; the script rule asks for
kana and kanji in Japanese documents and Latin letters in English ones.

A cheap script-based detector tags each document ``ja`` (kana present and
kana + kanji a good share of its letters), ``en`` (Latin letters dominate; no
check that the language is English rather than another Latin-script language)
or ``other``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence

import numpy as np

# Character classes of the lookup table.
SPACE, HIRAGANA, KATAKANA, KANJI, LATIN, OTHER_LETTER, DIGIT, SYMBOL, OTHER = range(9)
N_CLASSES = 9
_TABLE_SIZE = 0x32400  # through CJK Extension H; anything above is OTHER

_KANJI_RANGES = ((0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF), (0x20000, 0x323AF))
_KANJI_EXTRA = {0x3005, 0x3006, 0x3007, 0x303B}  # 々 〆 〇 〻
_HIRAGANA_RANGES = ((0x3040, 0x309F), (0x1B100, 0x1B12F))
_KATAKANA_RANGES = ((0x30A0, 0x30FF), (0x31F0, 0x31FF), (0xFF66, 0xFF9F), (0x1B000, 0x1B0FF))
_LATIN_RANGES = (
    (0x41, 0x5A),
    (0x61, 0x7A),
    (0xAA, 0xAA),
    (0xBA, 0xBA),
    (0xC0, 0x24F),
    (0x1E00, 0x1EFF),
    (0x2C60, 0x2C7F),
    (0xA720, 0xA7FF),
    (0xAB30, 0xAB6F),
    (0xFF21, 0xFF3A),
    (0xFF41, 0xFF5A),
)

LANGS = ("ja", "en", "other")
_JA, _EN, _OTHER = range(3)  # codes of LANGS in metric arrays

# Default thresholds (the schema's defaults; config ``corpus.clean``).
DEFAULTS: dict = {
    "min_chars": 20,
    "max_chars": 200_000,
    "max_symbol_ratio": 0.3,
    "min_script_ratio": 0.2,
    "max_duplicate_line_fraction": 0.3,
    "max_duplicate_line_char_fraction": 0.2,
    "top_ngrams": [
        {"n": 2, "max_fraction": 0.20},
        {"n": 3, "max_fraction": 0.18},
        {"n": 4, "max_fraction": 0.16},
    ],
    "duplicate_ngrams": [
        {"n": 5, "max_fraction": 0.15},
        {"n": 6, "max_fraction": 0.14},
        {"n": 7, "max_fraction": 0.13},
        {"n": 8, "max_fraction": 0.12},
        {"n": 9, "max_fraction": 0.11},
        {"n": 10, "max_fraction": 0.10},
    ],
    "char_ngram_scale": 3,
    "ngram_min_words": 50,
    "min_punctuation_line_ratio": 0.1,
    "max_bullet_line_ratio": 0.9,
    "max_ellipsis_line_ratio": 0.3,
    "drop_lang_mismatch": True,
}


@functools.cache
def char_classes() -> np.ndarray:
    """A uint8 class (SPACE, HIRAGANA, ..., OTHER) per code point below ``_TABLE_SIZE``.

    The last entry (``_TABLE_SIZE``) is OTHER, for every code point above.
    """
    import unicodedata

    chars = [chr(cp) for cp in range(_TABLE_SIZE)]
    major = np.frombuffer(
        "".join(unicodedata.category(ch)[0] for ch in chars).encode("ascii"), dtype=np.uint8
    )
    letter, mark = major == ord("L"), major == ord("M")
    table = np.full(_TABLE_SIZE + 1, OTHER, dtype=np.uint8)
    table[:-1][major == ord("N")] = DIGIT
    table[:-1][(major == ord("P")) | (major == ord("S"))] = SYMBOL
    table[:-1][letter] = OTHER_LETTER

    def in_ranges(ranges) -> np.ndarray:
        out = np.zeros(_TABLE_SIZE, dtype=bool)
        for lo, hi in ranges:
            out[lo : hi + 1] = True
        return out

    table[:-1][letter & in_ranges(_LATIN_RANGES)] = LATIN
    table[:-1][(letter | mark) & in_ranges(_HIRAGANA_RANGES)] = HIRAGANA
    table[:-1][(letter | mark) & in_ranges(_KATAKANA_RANGES)] = KATAKANA
    table[:-1][letter & in_ranges(_KANJI_RANGES)] = KANJI
    table[sorted(_KANJI_EXTRA)] = KANJI
    table[[cp for cp, ch in enumerate(chars) if ch.isspace()]] = SPACE
    return table


def codepoints(text: str) -> np.ndarray:
    """The code points of ``text`` as uint32, one per character (a lone surrogate becomes "?")."""
    return np.frombuffer(text.encode("utf-32-le", "replace"), dtype=np.uint32)


def classes_of(cps: np.ndarray) -> np.ndarray:
    return char_classes()[np.minimum(cps, _TABLE_SIZE)]


def class_counts(text: str) -> np.ndarray:
    """How many characters of ``text`` fall in each class."""
    return np.bincount(classes_of(codepoints(text)), minlength=N_CLASSES)


def detect_lang_counts(counts: np.ndarray) -> np.ndarray:
    """Language codes (index into ``LANGS``) from per-document class counts ``(n, N_CLASSES)``.

    ``ja``: kana are at least 2 % and kana + kanji at least 10 % of the letters
    (Japanese sentences carry kana particles even when full of Latin names;
    Chinese has no kana, so kanji-only text is not ``ja``); ``en``: Latin letters
    are at least half of the letters; ``other`` otherwise (also without letters).
    """
    counts = np.atleast_2d(counts).astype(np.float64)
    kana = counts[:, HIRAGANA] + counts[:, KATAKANA]
    cjk = kana + counts[:, KANJI]
    letters = cjk + counts[:, LATIN] + counts[:, OTHER_LETTER]
    ja = (letters > 0) & (kana >= 0.02 * letters) & (cjk >= 0.1 * letters)
    en = ~ja & (letters > 0) & (counts[:, LATIN] >= 0.5 * letters)
    return np.where(ja, _JA, np.where(en, _EN, _OTHER)).astype(np.int8)


def detect_lang(text: str) -> str:
    """``ja``, ``en`` (Latin script) or ``other`` from the characters' scripts (see
    ``detect_lang_counts``)."""
    return LANGS[int(detect_lang_counts(class_counts(text))[0])]


def symbol_ratio(text: str) -> float:
    """Share of non-space characters that are punctuation or symbols (Unicode P*, S*)."""
    c = class_counts(text)
    n = c.sum() - c[SPACE]
    return float(c[SYMBOL] / n) if n else 0.0


# --------------------------------------------------------------------------- lines

# A line ends a sentence: terminal punctuation (C4's . ! ? and Japanese 。！？,
# which NFKC keeps as 。 and folds to ! ?), optionally inside closing quotes or brackets.
_TERMINAL = re.compile(r"[.!?。．！？][\"'”’」』）)\]】〉》]*$")
_BULLET = re.compile(r"^\s*[-*•‣◦●○■□▪▫◆◇・※►▶➢➤✓✔→⇒]")
_ELLIPSIS = re.compile(r"(\.\.|…|‥)$")


def line_metrics(text: str) -> tuple[float, float, float, float, float]:
    """Line statistics of one normalised text (non-blank lines only).

    Returns:
        duplicate line fraction (lines repeating an earlier line / lines),
        duplicate line character fraction (their characters / all line characters),
        punctuation line ratio (characters of the lines that end in terminal
        punctuation / all line characters: C4's rule, weighted by length so that
        an article with a long list keeps its prose),
        bullet line ratio (lines starting with a bullet / lines),
        ellipsis line ratio (lines ending in an ellipsis / lines).
    """
    lines = [line for line in text.split("\n") if line.strip()]
    if not lines:
        return 0.0, 0.0, 0.0, 0.0, 0.0
    seen: set[str] = set()
    dup = dup_chars = total = punct = bullet = ellipsis = 0
    for line in lines:
        total += len(line)
        if line in seen:
            dup += 1
            dup_chars += len(line)
        else:
            seen.add(line)
        if _TERMINAL.search(line):
            punct += len(line)
        if _BULLET.match(line):
            bullet += 1
        if _ELLIPSIS.search(line):
            ellipsis += 1
    n = len(lines)
    return dup / n, dup_chars / total, punct / total, bullet / n, ellipsis / n


def duplicate_line_fraction(text: str) -> float:
    """Share of non-blank lines that repeat an earlier line (Gopher's repetition rule)."""
    lines = [line for line in text.split("\n") if line.strip()]
    if len(lines) < 2:
        return 0.0
    return (len(lines) - len(set(lines))) / len(lines)


# --------------------------------------------------------------------------- n-grams

_MIX = np.uint64(0x9E3779B97F4A7C15)
_BASE = np.uint64(0x100000001B3)
_BASE_INV = np.uint64(pow(0x100000001B3, -1, 1 << 64))
_DOC_MIX = np.uint64(0xC2B2AE3D27D4EB4F)
_POS_BITS = np.uint64(24)
MAX_BATCH_TOKENS = (1 << 24) - 1  # token positions of a batch must fit in _POS_BITS


def _char_tokens(texts: Sequence[str]):
    """Non-space characters as tokens: ``(hash, chars, doc)`` arrays."""
    lens = np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts))
    cps = codepoints("".join(texts))
    doc = np.repeat(np.arange(len(texts)), lens)
    keep = classes_of(cps) != SPACE
    cps, doc = cps[keep], doc[keep]
    return (cps.astype(np.uint64) + np.uint64(1)) * _MIX, np.ones(len(cps), np.int64), doc


def _word_tokens(texts: Sequence[str]):
    """Words (``\\w+``) as tokens: ``(hash, chars, doc)`` arrays."""
    import polars as pl

    words = (
        pl.DataFrame({"doc": np.arange(len(texts)), "text": list(texts)})
        .with_columns(pl.col("text").str.extract_all(r"\w+"))
        .explode("text")
        .drop_nulls("text")
    )
    return (
        words["text"].hash(seed=0).to_numpy() | np.uint64(1),
        words["text"].str.len_chars().to_numpy().astype(np.int64),
        words["doc"].to_numpy().astype(np.int64),
    )


def _repetition(h1, lens, doc, n_docs: int, top_sizes, dup_sizes, scale: int, min_tokens: int):
    """Top and duplicate n-gram character fractions of one token stream (see ``ngram_metrics``).

    Sizes are visited in increasing order. Per size, one radix sort of
    ``(hash of the n-gram and its document) << 24 | position`` puts equal
    n-grams of a document next to each other, positions ascending: a group's
    size times its characters is the n-gram's coverage, and every member but
    the first is a repeat. An n-gram can only repeat if its prefix does, so
    each size only looks at the positions whose previous n-gram was in a
    repeated group; n-gram hashes come from prefix sums (``B**(p+k-1) *
    (G[p+k] - G[p])`` in wrapping uint64 arithmetic), so the work per size is
    proportional to those positions, not to the text.
    """
    top = {n: np.zeros(n_docs) for n in top_sizes}
    dup = {n: np.zeros(n_docs) for n in dup_sizes}
    size = len(h1)
    if size == 0:
        return top, dup
    if size > MAX_BATCH_TOKENS:
        raise ValueError(f"a batch of {size} tokens is over {MAX_BATCH_TOKENS}")
    # Documents shorter than min_tokens (words, or characters / scale) are not measured.
    long_enough = np.bincount(doc, minlength=n_docs) >= min_tokens * scale
    keep = long_enough[doc]
    if not keep.all():
        h1, lens, doc = h1[keep], lens[keep], doc[keep]
        size = len(h1)
        if size == 0:
            return top, dup
    total = np.bincount(doc, weights=lens, minlength=n_docs)
    denom = np.where(total > 0, total, 1.0)
    cum = np.concatenate([[0], np.cumsum(lens)])
    # Token j of the stream contributes h1[j] * B**-j to the prefix sum G.
    bpow = np.ones(size + 1, dtype=np.uint64)
    np.cumprod(np.full(size, _BASE, dtype=np.uint64), out=bpow[1:])
    ipow = np.ones(size, dtype=np.uint64)
    np.cumprod(np.full(size - 1, _BASE_INV, dtype=np.uint64), out=ipow[1:])
    g = np.zeros(size + 1, dtype=np.uint64)
    np.cumsum(h1 * ipow, out=g[1:])
    del ipow
    doc_end = np.cumsum(np.bincount(doc, minlength=n_docs))[doc]  # end of each token's document
    docmix = doc.astype(np.uint64) * _DOC_MIX
    pos_mask = np.uint64((1 << 24) - 1)
    cand = np.arange(size, dtype=np.int64)
    for n in sorted(set(top_sizes) | set(dup_sizes)):
        k = n * scale
        cand = cand[cand + k <= doc_end[cand]]
        if len(cand) == 0:
            break
        v = bpow[cand + k - 1] * (g[cand + k] - g[cand])
        v ^= docmix[cand]
        v &= ~pos_mask
        v |= cand.astype(np.uint64)
        v.sort()
        pos = (v & pos_mask).astype(np.int64)
        v >>= _POS_BITS
        new = np.empty(len(v), dtype=bool)
        new[:1] = True
        np.not_equal(v[1:], v[:-1], out=new[1:])
        starts = np.flatnonzero(new)
        counts = np.diff(np.append(starts, len(v)))
        repeated = counts > 1  # a single occurrence is no repetition
        if n in top:
            first = pos[starts[repeated]]
            score = counts[repeated] * (cum[first + k] - cum[first])
            order = np.argsort(score, kind="stable")
            best = np.zeros(n_docs)
            best[doc[first[order]]] = score[order]  # the last write per document is its max
            top[n] = np.minimum(best / denom, 1.0)
        if n in dup:
            rep = np.sort(pos[~new])
            # Characters covered by the union of the repeats' spans [p, p + k).
            end = np.minimum(rep + k, np.append(rep[1:], size))
            chars = cum[end] - cum[rep]
            dup[n] = np.bincount(doc[rep], weights=chars, minlength=n_docs) / denom
        cand = np.sort(pos[np.repeat(repeated, counts)])
    return top, dup


def ngram_metrics(
    texts: Sequence[str],
    langs: Sequence[str],
    top_sizes: Sequence[int],
    dup_sizes: Sequence[int],
    ja_scale: int = 1,
    min_words: int = 0,
) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
    """Gopher's repetition metrics for a batch of documents.

    For each ``n`` in ``top_sizes``: the share of a document's token characters
    covered by its most frequent n-gram (occurrences times length, at most 1).
    For each ``n`` in ``dup_sizes``: the share of token characters inside
    n-grams that repeat an earlier n-gram of the same document. Tokens are
    words for ``en`` and non-space characters for the other languages, whose
    ``n`` is multiplied by ``ja_scale`` (a Japanese word is 2-3 characters).
    Documents with fewer than ``min_words`` tokens (characters / ``ja_scale``)
    get 0, as do documents of more than ``MAX_BATCH_TOKENS`` characters.

    Returns:
        ``({n: fractions}, {n: fractions})``, arrays of length ``len(texts)``.
    """
    n_docs = len(texts)
    top = {n: np.zeros(n_docs) for n in top_sizes}
    dup = {n: np.zeros(n_docs) for n in dup_sizes}
    if not top and not dup:
        return top, dup
    for unit in ("char", "word"):
        idx = [
            i
            for i, lang in enumerate(langs)
            if (lang == "en") == (unit == "word") and len(texts[i]) <= MAX_BATCH_TOKENS
        ]
        # Groups of at most MAX_BATCH_TOKENS characters (tokens never outnumber characters).
        groups, group, size = [], [], 0
        for i in idx:
            if group and size + len(texts[i]) > MAX_BATCH_TOKENS:
                groups.append(group)
                group, size = [], 0
            group.append(i)
            size += len(texts[i])
        if group:
            groups.append(group)
        for group in groups:
            sub = [texts[i] for i in group]
            tokens = _word_tokens(sub) if unit == "word" else _char_tokens(sub)
            t, d = _repetition(
                *tokens,
                len(sub),
                top_sizes,
                dup_sizes,
                ja_scale if unit == "char" else 1,
                min_words,
            )
            for n in top:
                top[n][group] = t[n]
            for n in dup:
                dup[n][group] = d[n]
    return top, dup


# --------------------------------------------------------------------------- filters

Metrics = dict[str, np.ndarray]
Filter = Callable[[Metrics, dict], np.ndarray]
FILTERS: dict[str, Filter] = {}


def register_filter(reason: str) -> Callable[[Filter], Filter]:
    """Register ``fn(metrics, params) -> bool array`` (True drops) as the filter of ``reason``.

    Filters run in registration order; a document gets the first reason that fires.
    """

    def deco(fn: Filter) -> Filter:
        FILTERS[reason] = fn
        return fn

    return deco


@register_filter("too_short")
def _too_short(m: Metrics, p: dict) -> np.ndarray:
    return m["chars"] < p["min_chars"]


@register_filter("too_long")
def _too_long(m: Metrics, p: dict) -> np.ndarray:
    return m["chars"] > p["max_chars"]


@register_filter("lang_mismatch")
def _lang_mismatch(m: Metrics, p: dict) -> np.ndarray:
    if not p["drop_lang_mismatch"]:
        return np.zeros(len(m["chars"]), dtype=bool)
    return (m["lang"] != _OTHER) & (m["lang_detected"] != m["lang"])


@register_filter("symbol_ratio")
def _symbols(m: Metrics, p: dict) -> np.ndarray:
    return m["symbol_ratio"] > p["max_symbol_ratio"]


@register_filter("script_ratio")
def _script(m: Metrics, p: dict) -> np.ndarray:
    return (m["lang"] != _OTHER) & (m["script_ratio"] < p["min_script_ratio"])


@register_filter("duplicate_lines")
def _dup_lines(m: Metrics, p: dict) -> np.ndarray:
    return m["duplicate_line_fraction"] > p["max_duplicate_line_fraction"]


@register_filter("duplicate_line_chars")
def _dup_line_chars(m: Metrics, p: dict) -> np.ndarray:
    return m["duplicate_line_char_fraction"] > p["max_duplicate_line_char_fraction"]


@register_filter("top_ngram")
def _top_ngram(m: Metrics, p: dict) -> np.ndarray:
    out = np.zeros(len(m["chars"]), dtype=bool)
    for rule in p["top_ngrams"]:
        out |= m[f"top_{rule['n']}gram"] > rule["max_fraction"]
    return out


@register_filter("duplicate_ngrams")
def _dup_ngrams(m: Metrics, p: dict) -> np.ndarray:
    out = np.zeros(len(m["chars"]), dtype=bool)
    for rule in p["duplicate_ngrams"]:
        out |= m[f"dup_{rule['n']}gram"] > rule["max_fraction"]
    return out


@register_filter("punctuation_lines")
def _punct(m: Metrics, p: dict) -> np.ndarray:
    return m["punctuation_line_ratio"] < p["min_punctuation_line_ratio"]


@register_filter("bullet_lines")
def _bullets(m: Metrics, p: dict) -> np.ndarray:
    return m["bullet_line_ratio"] > p["max_bullet_line_ratio"]


@register_filter("ellipsis_lines")
def _ellipsis(m: Metrics, p: dict) -> np.ndarray:
    return m["ellipsis_line_ratio"] > p["max_ellipsis_line_ratio"]


def compute_metrics(texts: Sequence[str], langs: Sequence[str], params: dict) -> Metrics:
    """Every filter's metric for a batch of normalised texts with their source languages."""
    n_docs = len(texts)
    lens = np.fromiter((len(t) for t in texts), dtype=np.int64, count=n_docs)
    cps = codepoints("".join(texts))
    doc = np.repeat(np.arange(n_docs), lens)
    counts = np.bincount(doc * N_CLASSES + classes_of(cps), minlength=n_docs * N_CLASSES).reshape(
        n_docs, N_CLASSES
    )
    lang = np.array([LANGS.index(x) if x in LANGS else _OTHER for x in langs], dtype=np.int8)
    nonspace = counts.sum(1) - counts[:, SPACE]
    letters = counts[:, [HIRAGANA, KATAKANA, KANJI, LATIN, OTHER_LETTER]].sum(1)
    expected = np.where(
        lang == _JA,
        counts[:, HIRAGANA] + counts[:, KATAKANA] + counts[:, KANJI],
        counts[:, LATIN],
    )
    lines = np.array([line_metrics(t) for t in texts], dtype=np.float64).reshape(n_docs, 5)
    m: Metrics = {
        "chars": lens,
        "lang": lang,
        "lang_detected": detect_lang_counts(counts),
        "symbol_ratio": counts[:, SYMBOL] / np.maximum(nonspace, 1),
        "script_ratio": expected / np.maximum(letters, 1),
        "duplicate_line_fraction": lines[:, 0],
        "duplicate_line_char_fraction": lines[:, 1],
        "punctuation_line_ratio": lines[:, 2],
        "bullet_line_ratio": lines[:, 3],
        "ellipsis_line_ratio": lines[:, 4],
    }
    top_sizes = [r["n"] for r in params["top_ngrams"]]
    dup_sizes = [r["n"] for r in params["duplicate_ngrams"]]
    ngram_langs = [LANGS[i] for i in lang]
    top, dup = ngram_metrics(
        texts,
        ngram_langs,
        top_sizes,
        dup_sizes,
        params["char_ngram_scale"],
        params["ngram_min_words"],
    )
    for n, v in top.items():
        m[f"top_{n}gram"] = v
    for n, v in dup.items():
        m[f"dup_{n}gram"] = v
    return m


def drop_reasons(metrics: Metrics, params: dict) -> list[str | None]:
    """The first filter's reason per document, or ``None`` for documents that pass."""
    n_docs = len(metrics["chars"])
    reason = np.full(n_docs, -1, dtype=np.int64)
    names = list(FILTERS)
    for i, fn in enumerate(FILTERS.values()):
        hit = np.asarray(fn(metrics, params), dtype=bool) & (reason < 0)
        reason[hit] = i
    return [names[r] if r >= 0 else None for r in reason]


def quality_reason(text: str, params: dict | None = None, lang: str = "ja") -> str | None:
    """The first filter's reason to drop one normalised ``text`` of language ``lang``."""
    p = {**DEFAULTS, **(params or {})}
    return drop_reasons(compute_metrics([text], [lang], p), p)[0]
