"""Tests of domainllm.corpus.clean: normalisation, quality filters, dedup and statistics."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from domainllm.corpus.clean import (
    clean_corpus,
    duplicate_line_fraction,
    normalize_text,
    quality_reason,
    symbol_ratio,
)
from domainllm.errors import DataError, PipelineError

SAMPLES = Path(__file__).resolve().parents[2] / "data" / "samples"
PARAMS = {
    "min_chars": 20,
    "max_chars": 2000,
    "max_symbol_ratio": 0.3,
    "max_duplicate_line_fraction": 0.3,
}


def test_normalize_text_folds_width_and_whitespace():
    raw = "ＡＢＣ株式会社（東証）\u3000は\t増収 \u200b。\r\n\r\n\r\n\n  次の行  \n"
    assert normalize_text(raw) == "ABC株式会社(東証) は 増収 。\n\n次の行"
    assert normalize_text("ｶﾀｶﾅ①") == "カタカナ1"


def test_filters_work_for_japanese_and_english():
    ja = "当社グループの売上高は前年同期比で増加いたしました。"
    en = "The company reported higher revenue than in the previous year."
    assert quality_reason(ja, PARAMS) is None and quality_reason(en, PARAMS) is None
    assert quality_reason("短い文。", PARAMS) == "too_short"
    assert quality_reason(ja * 100, PARAMS) == "too_long"
    assert symbol_ratio("!!!???###ab") > 0.5
    assert quality_reason("★☆★☆ ■□■□ ※※※ ・・・ ◆◇◆◇ 表", PARAMS) == "symbol_ratio"
    lines = "\n".join(["同じ行です。"] * 4 + ["別の行です。"])
    assert duplicate_line_fraction(lines) == pytest.approx(3 / 5)
    assert quality_reason(lines + "\n最後の行になります。", PARAMS) == "duplicate_lines"


@pytest.fixture
def docs(tmp_path) -> Path:
    """Real Wikipedia sentences, plus planted duplicates, short and symbol-heavy texts."""
    items = json.loads(
        (SAMPLES / "stockmark_ner_wikipedia" / "ner.json").read_text(encoding="utf-8")
    )
    rows = [
        {"id": f"ner/{i}", "source": "ner", "title": "", "text": d["text"], "lang": "ja"}
        for i, d in enumerate(items[:400])
    ]
    # A full-width copy normalises to the same text as the original: an exact duplicate.
    width = str.maketrans({chr(c): chr(c + 0xFEE0) for c in range(0x21, 0x7F)})
    planted = [
        ("dup", items[5]["text"].translate(width)),
        ("dup", items[7]["text"]),
        ("junk", "@@@ ### $$$ %%% ^^^ &&& *** !!! ??? a"),
        ("junk", "短すぎる"),
    ]
    rows += [
        {"id": f"{s}/{i}", "source": s, "title": "ｔ", "text": t, "lang": "ja"}
        for i, (s, t) in enumerate(planted)
    ]
    path = tmp_path / "docs.parquet"
    pl.DataFrame(rows).write_parquet(path)
    return path


def test_clean_corpus_stats_add_up(docs, tmp_path):
    out, stats_path = tmp_path / "clean.parquet", tmp_path / "stats.json"
    clean_corpus(str(docs), str(out), str(stats_path), **PARAMS, dedup="exact")
    stats = json.loads(stats_path.read_text())
    clean = pl.read_parquet(out)
    source = pl.read_parquet(docs)
    assert clean.columns == ["id", "source", "title", "text", "lang"]
    assert stats["input_docs"] == source.height == 404
    assert stats["kept_docs"] == clean.height
    assert stats["input_docs"] == stats["kept_docs"] + sum(stats["dropped"].values())
    for s in stats["per_source"].values():
        assert s["input"] == s["kept"] + sum(s["dropped"].values())
    assert sum(s["input"] for s in stats["per_source"].values()) == stats["input_docs"]
    assert stats["per_source"]["dup"]["dropped"]["duplicate"] == 2
    assert stats["per_source"]["junk"]["dropped"]["symbol_ratio"] == 1
    assert stats["per_source"]["junk"]["dropped"]["too_short"] == 1
    assert set(stats["dropped"]) == {
        "too_short",
        "too_long",
        "symbol_ratio",
        "duplicate_lines",
        "duplicate",
    }
    # Kept texts are normalised, unique, and within the limits.
    assert clean["text"].n_unique() == clean.height
    assert all(t == normalize_text(t) and 20 <= len(t) <= 2000 for t in clean["text"])
    assert clean["id"].to_list() == [i for i in source["id"] if i in set(clean["id"])]  # order kept

    clean_corpus(str(docs), str(out), str(stats_path), **PARAMS, dedup="none")
    stats = json.loads(stats_path.read_text())
    assert stats["dropped"]["duplicate"] == 0
    assert stats["per_source"]["dup"]["kept"] == 2


def test_clean_corpus_errors(docs, tmp_path):
    out = tmp_path / "clean.parquet"
    with pytest.raises(PipelineError, match="corpus.clean.dedup"):
        clean_corpus(str(docs), str(out), str(tmp_path / "s.json"), **PARAMS, dedup="minhash")
    with pytest.raises(PipelineError, match="every document was dropped"):
        clean_corpus(str(docs), str(out), str(tmp_path / "s.json"), **{**PARAMS, "min_chars": 1999})
    assert not out.exists()
    bad = tmp_path / "bad.parquet"
    pl.DataFrame({"id": ["a"], "text": ["x"]}).write_parquet(bad)
    with pytest.raises(DataError, match=r"bad\.parquet: missing column\(s\) source, title, lang"):
        clean_corpus(str(bad), str(out), str(tmp_path / "s.json"), **PARAMS)
