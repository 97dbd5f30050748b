"""Tests of domainllm.models.score on a tiny candidate and real domain/JCQA samples."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from domainllm.errors import ConfigError, DataError
from domainllm.models.score import corpus_token_count, score_base, tokenizer_efficiency
from tests.unit._tiny_lm import ROOT, chabsa_documents, save_folder, tiny_llama


def chabsa_reports(n: int) -> pl.DataFrame:
    return pl.DataFrame(
        [
            {
                "id": doc["header"]["document_id"],
                "title": doc["header"]["document_name"],
                "text": "\n".join(s["sentence"] for s in doc["sentences"]),
            }
            for doc in chabsa_documents(n)
        ]
    )


@pytest.fixture(scope="module")
def candidate(tmp_path_factory) -> Path:
    """A tiny random-weight Llama candidate folder named 'tiny-x'."""
    from domainllm.models.build import train_tokenizer

    tok = train_tokenizer(chabsa_reports(30)["text"].to_list(), 600)
    model = tiny_llama(tok, layers=1)
    return save_folder(tmp_path_factory.mktemp("base") / "tiny-x", model, tok)


TASKS = [
    str(ROOT / "config" / "tasks" / f) for f in ("jcommonsenseqa.yaml", "chabsa_sentiment.yaml")
]


def selected_corpus(path: Path, n: int = 40) -> Path:
    """A selected-corpus-shaped table (id, source, text) of chABSA reports."""
    reports = chabsa_reports(n)
    reports.select("id", pl.lit("chabsa").alias("source"), "text").write_parquet(path)
    return path


def score(candidate: Path, domain: Path, out: Path, *, corpus: Path, max_items: int, **kw):
    return score_base(
        str(candidate),
        str(out),
        domain_texts=str(domain),
        corpus=str(corpus),
        tasks=TASKS,
        max_items=max_items,
        **{"ppl_seq_len": 64, **kw},
    )


def test_score_base_writes_all_metrics(candidate, tmp_path, monkeypatch):
    import torch

    torch.set_num_threads(1)
    monkeypatch.chdir(ROOT)  # task files name their data relative to the working directory
    domain = tmp_path / "heldout.parquet"
    reports = chabsa_reports(33)[30:]  # held out from the tokenizer's texts
    reports.write_parquet(domain)
    corpus = selected_corpus(tmp_path / "selected.parquet")
    out = tmp_path / "scores" / "tiny-x.json"
    score(candidate, domain, out, corpus=corpus, max_items=12, ppl_stride=16)
    s = json.loads(out.read_text())
    assert s["candidate"] == "tiny-x" and s["model_dir"] == str(candidate)
    assert s["vocab_size"] == 600 and s["parameters"] > 0
    chars = sum(len(t) for t in reports["text"])
    assert s["domain_chars"] == chars
    assert s["chars_per_token"] == pytest.approx(chars / s["domain_tokens"])
    assert s["bytes_per_token"] > s["chars_per_token"]  # Japanese: 3 bytes per character
    assert s["unk_rate"] == 0.0  # byte-level BPE never needs <unk>
    # Sliding window: every token once, in about seq_len / stride times the disjoint windows.
    assert s["domain_eval_tokens"] == s["domain_tokens"]
    assert (s["ppl_seq_len"], s["ppl_stride"]) == (64, 16)
    assert s["ppl_windows"] >= 3.5 * s["domain_tokens"] / 64
    # A random model is about as bad as uniform: perplexity near the vocabulary size.
    assert 200 < s["domain_perplexity"] < 3000
    assert s["domain_bits_per_char"] > 0
    assert s["corpus_docs"] == 40 and s["corpus_tokens_estimated"] is False
    assert s["corpus_tokens"] > s["corpus_chars"] / 10
    for task in ("jcqa", "chabsa_sentiment"):
        assert s[f"{task}_n"] == 12 and s["tasks"][task]["n"] == 12
        assert 0 <= s[f"{task}_acc"] <= 1 and 0 <= s[f"{task}_acc_norm"] <= 1
        assert s["higher_is_better"][f"{task}_acc_norm"] is True
    assert s["tasks"]["jcqa"]["version"] == 1
    assert s["higher_is_better"]["domain_bits_per_char"] is False
    assert set(s["timings"]) == {"tokenizer", "perplexity", "task_jcqa", "task_chabsa_sentiment"}


def test_corpus_tokens_are_what_the_shards_hold(candidate, tmp_path):
    """corpus_tokens counts as write_shards does (text tokens plus one eos per document)."""
    from transformers import AutoTokenizer

    from domainllm.corpus.shards import write_shards

    corpus = selected_corpus(tmp_path / "selected.parquet", n=25)
    # A document quoting the special tokens (an HTML strikethrough): counted as text.
    df = pl.read_parquet(corpus)
    quoted = "価格は<s>100円</s>から<pad>90円に</s>"
    df.with_columns(pl.col("text").str.replace("^", quoted).alias("text")).write_parquet(corpus)
    manifest = write_shards(str(corpus), str(candidate), str(tmp_path / "shards"))
    tok = AutoTokenizer.from_pretrained(candidate)
    exact = corpus_token_count(tok, str(corpus))
    splits = manifest["splits"].values()  # train and validation: the whole corpus
    assert exact["corpus_tokens"] == sum(s["total_tokens"] for s in splits)
    assert exact["corpus_docs"] == sum(s["total_docs"] for s in splits) == 25
    assert exact["corpus_tokens_estimated"] is False
    eff = tokenizer_efficiency(tok, [quoted])
    assert eff["lost_char_rate"] == 0 and eff["domain_tokens"] > 10
    # Beyond max_docs the count is estimated from a sample, close to the exact one.
    est = corpus_token_count(tok, str(corpus), max_docs=10, seed=3)
    assert est["corpus_tokens_estimated"] is True and est["corpus_docs"] == 25
    assert est["corpus_chars"] == exact["corpus_chars"]
    assert est["corpus_tokens"] == pytest.approx(exact["corpus_tokens"], rel=0.15)
    assert est["corpus_tokens"] != exact["corpus_tokens"]


def test_score_base_needs_a_text_column(candidate, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    corpus = selected_corpus(tmp_path / "selected.parquet", n=3)
    bad = tmp_path / "heldout.parquet"
    pl.DataFrame({"id": ["a"], "body": ["x"]}).write_parquet(bad)
    out = tmp_path / "s.json"
    with pytest.raises(DataError, match="heldout.parquet.*'text'"):
        score(candidate, bad, out, corpus=corpus, max_items=5)
    with pytest.raises(DataError, match="heldout.parquet.*'text'"):
        score(candidate, corpus, out, corpus=bad, max_items=5)
    assert not out.exists()


def test_stride_must_fit_the_window(candidate, tmp_path):
    corpus = selected_corpus(tmp_path / "selected.parquet", n=3)
    out = tmp_path / "s.json"
    with pytest.raises(ConfigError, match="base.selection.ppl_stride"):
        score(candidate, corpus, out, corpus=corpus, max_items=5, ppl_stride=65)
    assert not out.exists()
