"""Tests of domainllm.models.score on a tiny candidate and real domain/JCQA samples."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from domainllm.errors import DataError
from domainllm.models.score import score_base, tokenizer_efficiency
from tests.unit._tiny_lm import JCQA, chabsa_documents, save_folder, tiny_llama


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


def score(candidate: Path, domain: Path, out: Path, *, jcqa_max_items: int, ppl_seq_len: int):
    return score_base(
        str(candidate),
        str(out),
        domain_texts=str(domain),
        jcqa=str(JCQA),
        jcqa_max_items=jcqa_max_items,
        ppl_seq_len=ppl_seq_len,
    )


def test_score_base_writes_all_metrics(candidate, tmp_path):
    import torch

    torch.set_num_threads(1)
    domain = tmp_path / "heldout.parquet"
    reports = chabsa_reports(33)[30:]  # held out from the tokenizer's texts
    reports.write_parquet(domain)
    out = tmp_path / "scores" / "tiny-x.json"
    score(candidate, domain, out, jcqa_max_items=12, ppl_seq_len=64)
    s = json.loads(out.read_text())
    assert s["candidate"] == "tiny-x" and s["model_dir"] == str(candidate)
    assert s["vocab_size"] == 600 and s["parameters"] > 0
    chars = sum(len(t) for t in reports["text"])
    assert s["domain_chars"] == chars
    assert s["chars_per_token"] == pytest.approx(chars / s["domain_tokens"])
    assert s["bytes_per_token"] > s["chars_per_token"]  # Japanese: 3 bytes per character
    assert s["unk_rate"] == 0.0  # byte-level BPE never needs <unk>
    assert s["domain_eval_tokens"] == s["domain_tokens"]
    # A random model is about as bad as uniform: perplexity near the vocabulary size.
    assert 200 < s["domain_perplexity"] < 3000
    assert s["domain_bits_per_char"] > 0
    assert s["jcqa_n"] == 12 and 0 <= s["jcqa_acc"] <= 1 and 0 <= s["jcqa_acc_norm"] <= 1


def test_tokenizer_efficiency_counts_unknown_tokens():
    class Tok:
        unk_token_id = 0

        def __call__(self, texts, add_special_tokens=False):
            return {"input_ids": [[5, 0, 6, 0] if "?" in t else [5, 6] for t in texts]}

    eff = tokenizer_efficiency(Tok(), ["ab?c", "déf"])
    assert eff["domain_tokens"] == 6 and eff["domain_chars"] == 7
    assert eff["unk_rate"] == pytest.approx(2 / 6)
    assert eff["bytes_per_token"] == pytest.approx(8 / 6)


def test_score_base_needs_a_text_column(candidate, tmp_path):
    bad = tmp_path / "heldout.parquet"
    pl.DataFrame({"id": ["a"], "body": ["x"]}).write_parquet(bad)
    out = tmp_path / "s.json"
    with pytest.raises(DataError, match="heldout.parquet.*'text'"):
        score(candidate, bad, out, jcqa_max_items=5, ppl_seq_len=32)
    assert not out.exists()
