"""Tests of domainllm.corpus.quality: language detection, each filter, the n-gram metrics."""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml

from domainllm.corpus.clean import normalize_text
from domainllm.corpus.quality import (
    DEFAULTS,
    FILTERS,
    compute_metrics,
    detect_lang,
    ngram_metrics,
    quality_reason,
    symbol_ratio,
)
from domainllm.corpus.readers import SourceStats, read_mediawiki

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "data" / "samples"

# Real Wikipedia prose (the openings of 地理学 and Anarchism in the shipped dumps).
JA = (
    "地理学(ちりがく)は、地域や空間、場所、自然環境という物理的存在を対象の中に含むことから、"
    "人文科学、社会科学、自然科学のいずれの性格も有する。広範な領域を網羅する。"
    "また「地理学と哲学は諸科学の母」と称される。\n\n"
    "元来は農耕や戦争、統治のため、各地の情報を調査しまとめるための研究領域として成立した。"
    "地理学誕生の地は、古代ギリシアである。学問としては、博物学の部門に属した。"
)
EN = (
    "Anarchism is a political philosophy and movement that is skeptical of all justifications "
    "for authority and seeks to abolish the institutions they claim maintain unnecessary "
    "coercion and hierarchy, typically including, though not necessarily limited to, the state "
    "and capitalism. Anarchism advocates for the replacement of the state with stateless "
    "societies or other forms of free associations.\n\n"
    "Humans lived in societies without formal hierarchies long before the establishment of "
    "formal states, realms, or empires."
)


def reason(text: str, lang: str, **params) -> str | None:
    return quality_reason(normalize_text(text), params, lang=lang)


def test_real_prose_passes_every_filter():
    assert len(JA) > 150 and len(EN.split()) > 50  # long enough for the n-gram rules
    assert reason(JA, "ja") is None
    assert reason(EN, "en") is None


def test_language_detection_by_script():
    assert detect_lang(JA) == "ja" and detect_lang(EN) == "en"
    # Japanese sentences full of Latin names still carry kana particles.
    assert detect_lang("2010年12月、High-Tech Grunderfondsから500,000ユーロ投資を受けた。") == "ja"
    assert detect_lang("中华人民共和国是一个位于东亚的社会主义国家。") == "other"  # no kana
    assert detect_lang("Москва — столица России.") == "other"
    assert detect_lang("12345 67890") == "other"


@pytest.mark.parametrize(
    ("text", "lang", "params", "expected"),
    [
        ("短い文です。", "ja", {}, "too_short"),
        ("Too short.", "en", {}, "too_short"),
        (JA, "ja", {"max_chars": 100}, "too_long"),
        (EN, "en", {"max_chars": 100}, "too_long"),
        (EN, "ja", {}, "lang_mismatch"),
        (JA, "en", {}, "lang_mismatch"),
        ("価格★☆★☆■□■□※※※◆◇◆◇★☆です。", "ja", {}, "symbol_ratio"),
        ("Buy now!!! $$$ ### @@@ *** Great deals!!! %%% &&& ^^^ ~~~", "en", {}, "symbol_ratio"),
        (
            "「UVERworld KING'S PARADE at Yokohama Arena」は、UVERworldの11枚目のライブDVDである。",
            "ja",
            {},
            "script_ratio",
        ),
        (JA, "en", {"drop_lang_mismatch": False}, "script_ratio"),
        ("同じ行が続きます。\n" * 4 + "最後の行だけは別の内容です。", "ja", {}, "duplicate_lines"),
        ("The same line again.\n" * 4 + "Only the last line differs.", "en", {}, "duplicate_lines"),
    ],
)
def test_each_filter_gives_its_reason(text, lang, params, expected):
    assert reason(text, lang, **params) == expected


def test_duplicate_line_characters():
    # Two of ten lines repeat (not over 0.3 of the lines) but they hold most characters.
    long_ja = (
        "この長い一文は文書の中でもう一度だけ繰り返されるので、"
        "文字数では大きな割合を占めることになる。"
    )
    short_ja = [f"短い行その{i}です。" for i in range(8)]
    ja = "\n".join([long_ja, *short_ja, long_ja])
    assert reason(ja, "ja") == "duplicate_line_chars"
    long_en = (
        "This long sentence appears twice in the document, so it holds a large share of "
        "its characters although few of its lines repeat."
    )
    en = "\n".join([long_en, *[f"Short line {i}." for i in range(8)], long_en])
    assert reason(en, "en", ngram_min_words=1000) == "duplicate_line_chars"


def test_top_ngram():
    # A phrase repeated through otherwise varied prose, on one line.
    parts = JA.replace("\n", "").replace("。", "、").split("、")[:12]
    ja = "".join(f"{part}今すぐ購入して" for part in parts) + "。"
    assert reason(ja, "ja") == "top_ngram"
    words = EN.replace("\n", " ").split()
    en = " ".join(f"{w} buy now" for w in words[:60]) + "."
    assert reason(en, "en") == "top_ngram"


def test_duplicate_ngrams():
    # A whole passage said twice on one line: every n-gram repeats once, none dominates.
    ja = JA.replace("\n", "")
    assert reason(ja + ja, "ja") == "duplicate_ngrams"
    en = EN.replace("\n", " ")
    assert reason(en + " " + en, "en") == "duplicate_ngrams"
    # Short texts skip the n-gram rules: a sentence may repeat a name.
    short = "NARUTO-ナルト-外伝の続編としてNARUTO-ナルト-外伝の映画が作られた。"
    assert reason(short, "ja") is None


def test_punctuation_bullets_and_ellipses():
    places = ["東京タワー", "大阪の城", "名古屋めし", "札幌ラーメン", "福岡のやたい", "神戸ビーフ"]
    assert reason("\n".join(places), "ja") == "punctuation_lines"
    assert reason("Apples\nOranges\nBananas\nGrapes\nPears", "en") == "punctuation_lines"
    # A long list after real prose does not outweigh it (characters, not lines, are counted).
    assert reason(JA + "\n" + "\n".join(places), "ja") is None
    bullets_ja = "\n".join(f"・{c}は日本の都市です。" for c in ("東京", "大阪", "京都", "札幌"))
    assert reason(bullets_ja, "ja") == "bullet_lines"
    bullets_en = "\n".join(f"- {c} is a city." for c in ("Paris", "Rome", "Oslo", "Lima"))
    assert reason(bullets_en, "en") == "bullet_lines"
    more_ja = "\n".join(f"{c}の続きはこちら…" for c in ("東京", "大阪", "京都"))
    assert reason(more_ja + "\n" + JA, "ja") == "ellipsis_lines"
    more_en = "\n".join(f"Read more about {c}..." for c in ("Paris", "Rome", "Oslo"))
    assert reason(more_en + "\n" + EN, "en") == "ellipsis_lines"


def test_symbol_ratio_counts_punctuation_and_symbols():
    assert symbol_ratio("!!!???###ab") == pytest.approx(9 / 11)
    assert symbol_ratio("「あ」") == pytest.approx(2 / 3)


def test_schema_defaults_match_the_code():
    schema = yaml.safe_load((REPO / "config" / "schema.yaml").read_text(encoding="utf-8"))
    clean = schema["properties"]["corpus"]["properties"]["clean"]["properties"]
    for key, value in DEFAULTS.items():
        assert clean[key]["default"] == value, key
    # Every filter's reason is documented in the schema.
    described = " ".join(str(v.get("description", "")) for v in clean.values())
    for name in FILTERS:
        assert name in described, name


def _brute_force(tokens: list[str], n: int) -> tuple[float, float]:
    """Gopher's top and duplicate n-gram character fractions, the slow obvious way."""
    total = sum(len(t) for t in tokens)
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    counts = Counter(grams)
    top = max((c * sum(len(t) for t in g) for g, c in counts.items() if c > 1), default=0)
    seen, covered = set(), set()
    for i, g in enumerate(grams):
        if g in seen:
            covered.update(range(i, i + n))
        seen.add(g)
    return min(top / total, 1.0), sum(len(tokens[i]) for i in covered) / total


@pytest.fixture(scope="module")
def wiki_texts():
    texts = []
    for dump, lang in (("wp2txt_testdata_ja.xml.bz2", "ja"), ("wp2txt_testdata_en.xml.bz2", "en")):
        source = {"path": str(SAMPLES / "wiki_dumps" / dump)}
        for doc in itertools.islice(read_mediawiki(source, SourceStats(), "x"), 4):
            texts.append((normalize_text(doc.text)[:6000], lang))
    return texts


def test_ngram_metrics_match_a_brute_force_count(wiki_texts):
    import re

    texts = [t for t, _ in wiki_texts] + [JA + JA, "あいうえおあいうえお" * 30]
    langs = [lang for _, lang in wiki_texts] + ["ja", "ja"]
    sizes = [1, 2, 3, 5]
    top, dup = ngram_metrics(texts, langs, sizes, sizes, ja_scale=2, min_words=0)
    for i, (text, lang) in enumerate(zip(texts, langs, strict=True)):
        tokens = re.findall(r"\w+", text) if lang == "en" else [c for c in text if not c.isspace()]
        for n in sizes:
            k = n if lang == "en" else 2 * n
            want_top, want_dup = _brute_force(tokens, k)
            assert top[n][i] == pytest.approx(want_top), (i, n)
            assert dup[n][i] == pytest.approx(want_dup), (i, n)
    assert any(dup[5][i] > 0 for i in range(len(texts)))


def test_metrics_are_per_document(wiki_texts):
    """A batch gives every document the values it gets alone."""
    texts = [t for t, _ in wiki_texts]
    langs = [lang for _, lang in wiki_texts]
    together = compute_metrics(texts, langs, DEFAULTS)
    for i in (0, len(texts) - 1):
        alone = compute_metrics([texts[i]], [langs[i]], DEFAULTS)
        for key, values in together.items():
            np.testing.assert_allclose(values[i], alone[key][0], err_msg=key)
