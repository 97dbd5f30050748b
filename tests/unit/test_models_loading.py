"""Tests of domainllm.models.loading: safe loading of model folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from domainllm.errors import DataError
from domainllm.models.loading import load_causal_lm, weight_format

SAMPLES = Path(__file__).resolve().parents[2] / "data" / "samples"


def chabsa_sentences(n: int = 200) -> list[str]:
    out = []
    with open(SAMPLES / "chabsa" / "chabsa_all.jsonl", encoding="utf-8") as f:
        for line in f:
            out.extend(s["sentence"] for s in json.loads(line)["sentences"])
            if len(out) >= n:
                break
    return out[:n]


@pytest.fixture(scope="module")
def parts():
    """A tiny model and tokenizer (not saved)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from domainllm.models.build import train_tokenizer

    tok = train_tokenizer(chabsa_sentences(), 400)
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        intermediate_size=32,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
    )
    return LlamaForCausalLM(cfg), tok


def test_loads_a_safetensors_folder_in_eval_mode(parts, tmp_path):
    import torch

    model, tok = parts
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    assert weight_format(tmp_path) == "safetensors"
    loaded, ltok = load_causal_lm(tmp_path)
    assert not loaded.training
    assert ltok.pad_token_id == tok.pad_token_id
    assert all(
        torch.equal(a, b)
        for a, b in zip(model.state_dict().values(), loaded.state_dict().values(), strict=True)
    )
    loaded16, _ = load_causal_lm(str(tmp_path), dtype=torch.bfloat16)
    assert next(loaded16.parameters()).dtype == torch.bfloat16


def test_refuses_folders_without_weights(parts, tmp_path):
    model, tok = parts
    with pytest.raises(DataError, match="no config.json"):
        load_causal_lm(tmp_path)
    model.config.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    with pytest.raises(DataError, match=f"{tmp_path}.*no model weights"):
        load_causal_lm(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        load_causal_lm(tmp_path / "missing" / "model")
    with pytest.raises(DataError, match="not a folder"):
        load_causal_lm(tmp_path / "config.json")


def test_pickled_weights_need_allow_pickle(parts, tmp_path):
    import torch

    model, tok = parts
    model.config.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    assert weight_format(tmp_path) == "pickle"
    with pytest.raises(DataError, match=f"{tmp_path}.*pickled.*allow_pickle"):
        load_causal_lm(tmp_path)
    loaded, _ = load_causal_lm(tmp_path, allow_pickle=True)
    assert torch.equal(loaded.lm_head.weight, model.lm_head.weight)
