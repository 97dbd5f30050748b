"""Tests of domainllm.models.build: tiny Llama candidates built from real sample text."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from domainllm.errors import DataError, PipelineError
from domainllm.models.build import build_base, sample_sequences, train_tokenizer

SAMPLES = Path(__file__).resolve().parents[2] / "data" / "samples"

TINY = {
    "tokenizer": {"vocab_size": 500, "langs": ["ja"]},
    "model": {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64},
    "pretrain": {"steps": 20, "batch_size": 4, "seq_len": 32, "learning_rate": 0.01},
}


def real_corpus(n_ja: int = 300, n_en: int = 150) -> pl.DataFrame:
    """Cleaned-corpus-shaped rows: Japanese Wikipedia sentences and English seed tasks."""
    ner = json.loads((SAMPLES / "stockmark_ner_wikipedia" / "ner.json").read_text(encoding="utf-8"))
    rows = [
        {
            "id": f"ja_sentences/{i}",
            "source": "ja_sentences",
            "title": "",
            "text": d["text"],
            "lang": "ja",
        }
        for i, d in enumerate(ner[:n_ja])
    ]
    with open(SAMPLES / "self_instruct_en" / "seed_tasks.jsonl", encoding="utf-8") as f:
        for i, line in enumerate(f):
            if i >= n_en:
                break
            task = json.loads(line)
            text = task["instruction"] + "\n" + task["instances"][0]["output"]
            rows.append(
                {
                    "id": f"self_instruct/{i}",
                    "source": "self_instruct",
                    "title": "",
                    "text": text,
                    "lang": "en",
                }
            )
    return pl.DataFrame(rows)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("corpus") / "clean.parquet"
    real_corpus().write_parquet(path)
    return str(path)


@pytest.fixture(scope="module")
def built(corpus, tmp_path_factory) -> Path:
    import torch

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("base") / "tiny-ja"
    build_base(str(out), corpus=corpus, spec=TINY, source=None, seed=7)
    return out


def test_build_writes_a_loadable_folder_with_falling_loss(built):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert (built / "model.safetensors").is_file()
    assert not list(built.glob("*.bin"))
    info = json.loads((built / "build.json").read_text())
    assert info["spec"] == TINY
    assert info["tokens_seen"] == 20 * 4 * 32
    assert len(info["losses"]) == 20
    assert info["loss_last_mean"] < info["loss_first_mean"] - 0.5
    model = AutoModelForCausalLM.from_pretrained(built)
    tok = AutoTokenizer.from_pretrained(built)
    assert model.config.model_type == "llama"
    assert model.config.vocab_size == len(tok) == 500
    assert sum(p.numel() for p in model.parameters()) == info["parameters"]
    assert tok.bos_token == "<s>" and tok.eos_token == "</s>"
    assert tok.pad_token == "<pad>" and tok.unk_token == "<unk>"
    assert len({tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id}) == 4
    # Llama-style: <s> is prepended; decoding round-trips the text.
    ids = tok("当連結会計年度の売上高は増加しました")["input_ids"]
    assert ids[0] == tok.bos_token_id
    assert tok.decode(ids, skip_special_tokens=True) == "当連結会計年度の売上高は増加しました"
    from domainllm.train.chat import ASSISTANT_HEADER, CHAT_TEMPLATE, USER_HEADER

    assert tok.chat_template == CHAT_TEMPLATE
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "こんにちは"}], add_generation_prompt=True, tokenize=False
    )
    assert prompt.startswith("<s>") and USER_HEADER + "こんにちは" in prompt
    assert prompt.endswith(ASSISTANT_HEADER)


def test_build_is_deterministic_for_a_seed(built, corpus, tmp_path):
    import torch
    from safetensors.torch import load_file

    torch.set_num_threads(1)
    again = tmp_path / "again"
    build_base(str(again), corpus=corpus, spec=TINY, source=None, seed=7)
    a, b = load_file(built / "model.safetensors"), load_file(again / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (built / "tokenizer.json").read_text() == (again / "tokenizer.json").read_text()


def test_tokenizer_languages_make_candidates_differ(corpus):
    df = pl.read_parquet(corpus)
    ja = df.filter(pl.col("lang") == "ja")["text"].to_list()
    en = df.filter(pl.col("lang") == "en")["text"].to_list()
    tok_ja, tok_en = train_tokenizer(ja, 600), train_tokenizer(en, 600)
    domain = "当社グループの連結売上高は前年同期比で増加し、営業利益も改善いたしました"
    english = "Write a short story about a robot who learns to paint landscapes."
    n = {
        name: (len(t(domain)["input_ids"]), len(t(english)["input_ids"]))
        for name, t in (("ja", tok_ja), ("en", tok_en))
    }
    assert n["ja"][0] < n["en"][0]  # Japanese text: fewer tokens with the ja tokenizer
    assert n["en"][1] < n["ja"][1]  # English text: fewer tokens with the en tokenizer


def test_sample_sequences_are_windows_of_the_stream():
    import numpy as np

    stream = np.arange(1000)
    seqs = sample_sequences(stream, 10, 16, seed=0)
    assert seqs.shape == (10, 16)
    assert all((s[1:] - s[:-1] == 1).all() and s[0] % 16 == 0 for s in seqs)
    assert len({int(s[0]) for s in seqs}) == 10  # no window twice while enough exist


def test_source_candidate_is_copied(built, tmp_path):
    from transformers import AutoTokenizer

    out = tmp_path / "copied"
    build_base(str(out), corpus=None, spec=None, source=str(built), seed=1)
    assert (out / "model.safetensors").is_file()
    assert json.loads((out / "build.json").read_text())["source"] == str(built)
    assert AutoTokenizer.from_pretrained(out).chat_template is not None


def test_bad_requests_leave_no_output(corpus, tmp_path):
    out = tmp_path / "x"
    with pytest.raises(PipelineError, match="exactly one"):
        build_base(str(out), corpus=corpus, spec=TINY, source="org/model", seed=1)
    with pytest.raises(PipelineError, match="exactly one"):
        build_base(str(out), corpus=corpus, spec=None, source=None, seed=1)
    other = {**TINY, "tokenizer": {"vocab_size": 500, "langs": ["other"]}}
    with pytest.raises(DataError, match="lang"):
        build_base(str(out), corpus=corpus, spec=other, source=None, seed=1)
    bad = tmp_path / "bad.parquet"
    pl.DataFrame({"id": ["a"], "body": ["text"]}).write_parquet(bad)
    with pytest.raises(DataError, match="bad.parquet.*lang|bad.parquet.*text"):
        build_base(str(out), corpus=str(bad), spec=TINY, source=None, seed=1)
    with pytest.raises(DataError, match="no model weights|does not exist"):
        build_base(str(out), corpus=None, spec=None, source=str(tmp_path / "nothing"), seed=1)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".x.tmp")]
