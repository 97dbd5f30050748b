"""Tests of domainllm.data.jsquad: JSQuAD questions as evaluation prompts."""

from __future__ import annotations

import json

import polars as pl
import pytest

from domainllm.data.instructions import prepare_instructions
from domainllm.data.jsquad import INSTRUCTION, jsquad_prompts, read_jsquad
from domainllm.errors import DataError
from tests.unit._tiny_lm import ELYZA, SAMPLES

JSQUAD = SAMPLES / "jglue" / "jsquad-v1.3_valid-v1.3.json"


def test_read_jsquad_sample():
    rows = read_jsquad(JSQUAD)
    assert len(rows) == 4442 and len({r["id"] for r in rows}) == 4442
    first = rows[0]
    assert first["id"] == "jsquad/a10336p0q0" and first["task"] == "jsquad"
    # Title and [SEP] dropped; instruction first, the question last.
    assert first["prompt"].startswith(INSTRUCTION + "\n\n文脈：梅雨（つゆ、ばいう）は")
    assert first["prompt"].endswith("質問：日本で梅雨がないのは北海道とどこか。")
    assert "[SEP]" not in first["prompt"]
    # Distinct answers, the first as the reference.
    assert first["answers"] == ["小笠原諸島", "小笠原諸島を除く日本"]
    assert first["reference"] == "小笠原諸島"


def test_sample_is_seeded_and_in_file_order():
    a, b = jsquad_prompts(JSQUAD, 20, seed=1), jsquad_prompts(JSQUAD, 20, seed=1)
    assert a == b and len(a) == 20
    assert a != jsquad_prompts(JSQUAD, 20, seed=2)
    order = {r["id"]: i for i, r in enumerate(read_jsquad(JSQUAD))}
    assert [order[r["id"]] for r in a] == sorted(order[r["id"]] for r in a)


def test_bad_files_name_file_and_key(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"data": [{"paragraphs": [{"qas": []}]}]}))
    with pytest.raises(DataError, match=r"bad.json: data\[0\].paragraphs\[0\]: missing 'context'"):
        read_jsquad(bad)
    para = {"context": "t [SEP] c", "qas": [{"id": "q1", "question": "?", "answers": []}]}
    bad.write_text(json.dumps({"data": [{"paragraphs": [para]}]}))
    with pytest.raises(DataError, match=r"qas\[0\] \(id q1\): no non-empty answer"):
        read_jsquad(bad)
    bad.write_text("{not json")
    with pytest.raises(DataError, match="cannot read JSQuAD JSON"):
        read_jsquad(bad)


def test_prepare_instructions_appends_jsquad_prompts(tmp_path):
    ev = tmp_path / "eval.parquet"
    counts = prepare_instructions(
        str(ELYZA), str(tmp_path / "cand.parquet"), str(ev),
        elyza_eval=5, seed=3, jsquad=str(JSQUAD), jsquad_items=4,
    )  # fmt: skip
    df = pl.read_parquet(ev)
    assert counts["eval"] == df.height == 9
    assert df["task"].to_list() == ["elyza"] * 5 + ["jsquad"] * 4
    # The ELYZA prompts come first, unchanged (the quantisation check reads the first ones).
    assert df["id"].head(5).str.starts_with("elyza/").all()
    qa = df.filter(pl.col("task") == "jsquad")
    assert qa["eval_aspect"].null_count() == 4
    assert all(r in a for r, a in zip(qa["reference"], qa["answers"], strict=True))
