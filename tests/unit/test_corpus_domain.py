"""Tests of domainllm.data.domain: chABSA reports split into seed and held-out sets."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from domainllm.data.domain import prepare_domain, read_domain_docs
from domainllm.errors import DataError, PipelineError

CHABSA = Path(__file__).resolve().parents[2] / "data" / "samples" / "chabsa" / "chabsa_all.jsonl"


def test_prepare_domain_is_disjoint_and_deterministic(tmp_path):
    def run(name, seed):
        s, h = tmp_path / f"{name}_seed.parquet", tmp_path / f"{name}_held.parquet"
        prepare_domain(str(CHABSA), str(s), str(h), seed_docs=120, heldout_docs=40, seed=seed)
        return pl.read_parquet(s), pl.read_parquet(h)

    seeds, held = run("a", 1234)
    assert seeds.columns == held.columns == ["id", "title", "text"]
    assert seeds.height == 120 and held.height == 40
    assert not set(seeds["id"]) & set(held["id"])
    again = run("b", 1234)
    assert seeds.equals(again[0]) and held.equals(again[1])
    other = run("c", 99)
    assert set(other[0]["id"]) != set(seeds["id"])
    assert set(seeds["text"]) <= {d["text"] for d in read_domain_docs(str(CHABSA))}


def test_read_domain_docs_one_report_per_row():
    docs = read_domain_docs(str(CHABSA))
    first = json.loads(CHABSA.read_text(encoding="utf-8").splitlines()[0])
    assert len(docs) == 230 and len({d["id"] for d in docs}) == 230
    assert docs[0]["id"] == first["header"]["document_id"]
    assert docs[0]["title"] == "ホクト株式会社"
    # Sentences joined with newlines, NFKC-normalised like the corpus.
    assert docs[0]["text"].count("\n") == len(first["sentences"]) - 1
    assert "(EU)" in docs[0]["text"] and "（ＥＵ）" not in docs[0]["text"]


def test_not_enough_documents_names_the_keys(tmp_path):
    with pytest.raises(
        PipelineError, match=r"230 domain documents.*data\.domain\.seed_docs \(200\)"
    ):
        prepare_domain(
            str(CHABSA),
            str(tmp_path / "s.parquet"),
            str(tmp_path / "h.parquet"),
            seed_docs=200,
            heldout_docs=40,
            seed=1,
        )
    assert not (tmp_path / "s.parquet").exists()


def test_bad_lines_name_file_and_line(tmp_path):
    lines = CHABSA.read_text(encoding="utf-8").splitlines()[:3]
    bad = tmp_path / "bad.jsonl"
    obj = json.loads(lines[1])
    del obj["sentences"]
    bad.write_text("\n".join([lines[0], json.dumps(obj, ensure_ascii=False), lines[2]]), "utf-8")
    with pytest.raises(DataError, match=r"bad\.jsonl:2: no 'sentences' list"):
        read_domain_docs(str(bad))
    dup = tmp_path / "dup.jsonl"
    dup.write_text("\n".join([lines[0], lines[1], lines[0]]), "utf-8")
    with pytest.raises(DataError, match=r"dup\.jsonl:3: duplicate header\.document_id"):
        read_domain_docs(str(dup))
    broken = tmp_path / "broken.jsonl"
    broken.write_text(lines[0] + "\n{not json\n", "utf-8")
    with pytest.raises(DataError, match=r"broken\.jsonl:2: invalid JSON"):
        read_domain_docs(str(broken))
