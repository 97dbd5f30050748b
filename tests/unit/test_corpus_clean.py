"""Tests of domainllm.corpus.clean: normalisation, filtering, dedup, statistics and samples."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from domainllm.corpus.clean import (
    NEAR_DUPLICATE,
    clean_corpus,
    duplicate_line_fraction,
    normalize_text,
    quality_reason,
)
from domainllm.corpus.quality import FILTERS
from domainllm.errors import DataError, PipelineError

SAMPLES = Path(__file__).resolve().parents[2] / "data" / "samples"
PARAMS = {
    "min_chars": 20,
    "max_chars": 2000,
    "max_symbol_ratio": 0.3,
    "max_duplicate_line_fraction": 0.3,
}
REASONS = {*FILTERS, "duplicate", "near_duplicate"}


def test_normalize_text_folds_width_and_whitespace():
    raw = "ＡＢＣ株式会社（東証）\u3000は\t増収 \u200b。\r\n\r\n\r\n\n  次の行  \n"
    assert normalize_text(raw) == "ABC株式会社(東証) は 増収 。\n\n次の行"
    assert normalize_text("ｶﾀｶﾅ①") == "カタカナ1"
    assert normalize_text(" a \n\n\n\n b\t\n") == "a\n\nb"


def test_existing_filters_still_work():
    ja = "当社グループの売上高は前年同期比で増加いたしました。"
    en = "The company reported higher revenue than in the previous year."
    assert quality_reason(ja, PARAMS) is None and quality_reason(en, PARAMS, lang="en") is None
    assert quality_reason("短い文。", PARAMS) == "too_short"
    assert quality_reason(ja * 100, PARAMS) == "too_long"
    lines = "\n".join(["同じ行です。"] * 4 + ["別の行です。"])
    assert duplicate_line_fraction(lines) == pytest.approx(3 / 5)
    assert quality_reason(lines + "\n最後の行になります。", PARAMS) == "duplicate_lines"


def lightly_edited(text: str) -> str:
    n = len(text)
    return text[: n // 2] + "、そして" + text[n // 2 + 3 :]


@pytest.fixture
def docs(tmp_path) -> Path:
    """Real Wikipedia sentences and two real paragraphs, plus planted duplicates and junk."""
    items = json.loads(
        (SAMPLES / "stockmark_ner_wikipedia" / "ner.json").read_text(encoding="utf-8")
    )
    rows = [
        {"id": f"ner/{i}", "source": "ner", "title": "", "text": d["text"], "lang": "ja"}
        for i, d in enumerate(items[:400])
    ]
    long_ja = "".join(d["text"] for d in items[400:406])  # a paragraph of six real sentences
    assert len(long_ja) > 250
    # A full-width copy normalises to the same text as the original: an exact duplicate.
    width = str.maketrans({chr(c): chr(c + 0xFEE0) for c in range(0x21, 0x7F)})
    planted = [
        ("dup", items[5]["text"].translate(width), "ja"),
        ("dup", items[7]["text"], "ja"),
        ("para", long_ja, "ja"),
        ("para", lightly_edited(long_ja), "ja"),
        ("junk", "@@@ ### $$$ %%% ^^^ &&& *** !!! ??? a", "other"),
        ("junk", "短すぎる", "ja"),
        ("junk", "This sentence is English in a Japanese source.", "ja"),
    ]
    rows += [
        {"id": f"{s}/{i}", "source": s, "title": "ｔ", "text": t, "lang": lang}
        for i, (s, t, lang) in enumerate(planted)
    ]
    path = tmp_path / "docs.parquet"
    pl.DataFrame(rows).write_parquet(path)
    return path


def run_clean(docs: Path, tmp_path: Path, **kw) -> tuple[pl.DataFrame, dict, list[dict]]:
    out, stats, samples = (tmp_path / n for n in ("clean.parquet", "stats.json", "samples.jsonl"))
    clean_corpus(str(docs), str(out), str(stats), str(samples), **{**PARAMS, **kw})
    lines = samples.read_text(encoding="utf-8").splitlines()
    return pl.read_parquet(out), json.loads(stats.read_text()), [json.loads(x) for x in lines]


def test_clean_corpus_stats_add_up(docs, tmp_path):
    clean, stats, _ = run_clean(docs, tmp_path, dedup="near")
    source = pl.read_parquet(docs)
    assert clean.columns == ["id", "source", "title", "text", "lang", "lang_detected"]
    assert stats["input_docs"] == source.height == 407
    assert stats["kept_docs"] == clean.height
    assert set(stats["dropped"]) == REASONS
    assert stats["input_docs"] == stats["kept_docs"] + sum(stats["dropped"].values())
    for s in stats["per_source"].values():
        assert s["input"] == s["kept"] + sum(s["dropped"].values())
        assert sum(s["lang_detected"].values()) == s["input"]
    assert sum(s["input"] for s in stats["per_source"].values()) == stats["input_docs"]
    per = stats["per_source"]
    assert per["dup"]["dropped"]["duplicate"] == 2
    assert per["para"]["dropped"][NEAR_DUPLICATE] == 1 and per["para"]["kept"] == 1
    assert per["junk"]["dropped"]["symbol_ratio"] == 1
    assert per["junk"]["dropped"]["too_short"] == 1
    assert per["junk"]["dropped"]["lang_mismatch"] == 1
    assert per["ner"]["kept"] > 0.9 * per["ner"]["input"]  # real sentences stay
    # Kept texts are normalised, unique, within the limits, in input order.
    assert clean["text"].n_unique() == clean.height
    assert all(t == normalize_text(t) and 20 <= len(t) <= 2000 for t in clean["text"])
    assert clean["id"].to_list() == [i for i in source["id"] if i in set(clean["id"])]
    assert set(clean["lang_detected"]) <= {"ja", "en", "other"}
    assert clean.filter(pl.col("source") == "ner")["lang_detected"].to_list().count("ja") > 350
    assert stats["params"]["dedup"] == "near" and stats["params"]["minhash"]["num_perm"] == 128

    clean, stats, _ = run_clean(docs, tmp_path, dedup="exact")
    assert stats["dropped"][NEAR_DUPLICATE] == 0 and stats["per_source"]["para"]["kept"] == 2
    clean, stats, _ = run_clean(docs, tmp_path, dedup="none", drop_lang_mismatch=False)
    assert stats["dropped"]["duplicate"] == 0 and stats["dropped"]["lang_mismatch"] == 0
    assert stats["per_source"]["dup"]["kept"] == 2


def test_dropped_samples(docs, tmp_path):
    _, stats, samples = run_clean(docs, tmp_path, dedup="near", dropped_samples_per_reason=2)
    by_reason: dict[str, list[dict]] = {}
    for s in samples:
        assert set(s) <= {"reason", "source", "id", "duplicate_of", "text"}
        assert len(s["text"]) <= 300
        by_reason.setdefault(s["reason"], []).append(s)
    for reason, n in stats["dropped"].items():
        assert len(by_reason.get(reason, [])) == min(n, 2), reason
    near = by_reason[NEAR_DUPLICATE][0]
    assert near["id"] == "para/3" and near["duplicate_of"] == "para/2"
    assert by_reason["duplicate"][0]["duplicate_of"] == "ner/5"
    assert by_reason["too_short"][0]["text"] == normalize_text(
        pl.read_parquet(docs).filter(pl.col("id") == by_reason["too_short"][0]["id"])["text"][0]
    )
    _, _, samples = run_clean(docs, tmp_path, dropped_samples_per_reason=0)
    assert samples == []


def test_clean_corpus_is_deterministic(docs, tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    run_clean(docs, first, dedup="near")
    run_clean(docs, second, dedup="near")
    for name in ("clean.parquet", "stats.json", "samples.jsonl"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_streaming_batches_and_a_leftover_work_folder_change_nothing(docs, tmp_path, monkeypatch):
    import domainllm.corpus.clean as clean_module

    whole, small = tmp_path / "whole", tmp_path / "small"
    whole.mkdir()
    small.mkdir()
    run_clean(docs, whole, dedup="near")
    # Tiny read batches and character batches: duplicates span many batches.
    monkeypatch.setattr(clean_module, "READ_ROWS", 13)
    monkeypatch.setattr(clean_module, "BATCH_CHARS", 500)
    monkeypatch.setattr(clean_module, "ROW_GROUP_ROWS", 5)
    run_clean(docs, small, dedup="near")
    assert pl.read_parquet(whole / "clean.parquet").equals(pl.read_parquet(small / "clean.parquet"))
    for name in ("stats.json", "samples.jsonl"):
        assert (whole / name).read_bytes() == (small / name).read_bytes(), name
    # The temporary work folder (survivors, dedup keys) is gone.
    assert sorted(p.name for p in small.iterdir()) == [
        "clean.parquet",
        "samples.jsonl",
        "stats.json",
    ]


def test_clean_corpus_errors(docs, tmp_path):
    out = tmp_path / "clean.parquet"
    with pytest.raises(PipelineError, match="corpus.clean.dedup"):
        clean_corpus(str(docs), str(out), str(tmp_path / "s.json"), **PARAMS, dedup="fuzzy")
    with pytest.raises(PipelineError, match="every document was dropped"):
        clean_corpus(str(docs), str(out), str(tmp_path / "s.json"), **{**PARAMS, "min_chars": 1999})
    with pytest.raises(PipelineError, match=r"corpus\.clean'?: unknown key\(s\) min_char"):
        clean_corpus(str(docs), str(out), str(tmp_path / "s.json"), min_char=3)
    with pytest.raises(PipelineError, match=r"corpus\.clean\.top_ngrams': repeated n"):
        clean_corpus(
            str(docs),
            str(out),
            str(tmp_path / "s.json"),
            top_ngrams=[{"n": 2, "max_fraction": 0.2}] * 2,
        )
    with pytest.raises(PipelineError, match=r"corpus\.clean\.minhash\.bands'?: 200"):
        clean_corpus(
            str(docs), str(out), str(tmp_path / "s.json"), **PARAMS, minhash={"bands": 200}
        )
    assert not out.exists() and not (tmp_path / "s.json").exists()
    assert not (tmp_path / "dropped_samples.jsonl").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    bad = tmp_path / "bad.parquet"
    pl.DataFrame({"id": ["a"], "text": ["x"]}).write_parquet(bad)
    with pytest.raises(DataError, match=r"bad\.parquet: missing column\(s\) source, title, lang"):
        clean_corpus(str(bad), str(out), str(tmp_path / "s.json"), **PARAMS)
