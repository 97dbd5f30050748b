"""Tests of domainllm.corpus.embedding_check: backends against human judgement on JSTS."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from domainllm.corpus.embedding_check import check_embeddings, read_sts_pairs
from domainllm.errors import DataError

JSTS = Path(__file__).resolve().parents[2] / "data/samples/jglue/jsts-v1.3_valid-v1.3.json"


def test_japanese_capable_backend_beats_minilm_on_jsts(tmp_path):
    """tfidf-svd (character n-grams) agrees with people better than English MiniLM."""
    import torch

    from domainllm.corpus.embed import fit_embedder

    torch.set_num_threads(1)
    # A pipeline embedder fitted on a tiny corpus, to check the 'pipeline' entry.
    a, _, _ = read_sts_pairs(JSTS, 80)
    pl.DataFrame({"id": [str(i) for i in range(60)], "text": a[:60]}).write_parquet(
        tmp_path / "clean.parquet"
    )
    pl.DataFrame({"text": a[60:80]}).write_parquet(tmp_path / "seeds.parquet")
    fit_embedder(
        str(tmp_path / "clean.parquet"),
        str(tmp_path / "seeds.parquet"),
        str(tmp_path / "state.npz"),
        str(tmp_path / "seeds.npy"),
        svd_dim=16,
    )
    out = tmp_path / "embedding_check.json"
    report = check_embeddings(str(JSTS), str(out), embedder=str(tmp_path / "state.npz"))
    assert json.loads(out.read_text()) == report
    assert report["pairs"] == 300
    tfidf = report["backends"]["tfidf-svd"]["spearman"]
    minilm = report["backends"]["sentence-transformers"]["spearman"]
    assert tfidf > minilm > 0.3, report
    assert report["best"] == "tfidf-svd"
    assert report["pipeline"]["backend"] == "tfidf-svd" and report["pipeline"]["dim"] == 16
    assert -1 <= report["pipeline"]["spearman"] <= 1
    for r in report["backends"].values():
        assert r["texts_per_s"] > 0 and -1 <= r["pearson"] <= 1


def test_spearman_is_the_rank_correlation_of_cosines(tmp_path):
    """A check on a file where the human score is exactly the string overlap order."""
    base = "今日は天気が良いので公園を散歩しました"
    rows = [
        {"sentence1": base, "sentence2": base[:k] + "x" * (len(base) - k), "label": k / 4}
        for k in range(0, len(base) + 1, 2)
    ]
    path = tmp_path / "sts.jsonl"
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows), "utf-8")
    report = check_embeddings(str(path), str(tmp_path / "o.json"), backends=["tfidf-svd"])
    assert report["pairs"] == len(rows) and "pipeline" not in report
    assert report["backends"]["tfidf-svd"]["spearman"] > 0.8


def test_bad_pairs_name_the_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"sentence1": "a", "sentence2": "b", "label": 1}\n{"sentence1": "a", "label": 2}\n',
        "utf-8",
    )
    with pytest.raises(DataError, match=r"bad\.jsonl:2: no 'sentence1'/'sentence2'"):
        read_sts_pairs(bad)
    bad.write_text('{"sentence1": "a", "sentence2": "b", "label": "high"}\n', "utf-8")
    with pytest.raises(DataError, match=r"bad\.jsonl:1: 'label' is not a number"):
        read_sts_pairs(bad)
    with pytest.raises(DataError, match="file not found"):
        check_embeddings(str(tmp_path / "none.jsonl"), str(tmp_path / "o.json"))
    assert not (tmp_path / "o.json").exists()
    a, b, human = read_sts_pairs(JSTS, 5)
    assert len(a) == len(b) == 5 and human.dtype == np.float64
