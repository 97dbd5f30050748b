"""Tests of domainllm.models.loading: safe loading of model folders."""

from __future__ import annotations

import pytest

from domainllm.errors import DataError
from domainllm.models.loading import load_causal_lm, weight_format
from tests.unit._tiny_lm import chabsa_documents, tiny_llama


@pytest.fixture(scope="module")
def parts():
    """A tiny model and tokenizer (not saved)."""
    from domainllm.models.build import train_tokenizer

    sentences = [s["sentence"] for doc in chabsa_documents() for s in doc["sentences"]]
    tok = train_tokenizer(sentences[:200], 400)
    return tiny_llama(tok, hidden=16, layers=1, intermediate=32), tok


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


def test_remote_code_runs_only_when_the_caller_turns_it_on(monkeypatch):
    """Hub ids pass straight to from_pretrained with trust_remote_code off by default
    and safetensors required (nothing is downloaded here: the loaders are stubbed)."""
    import transformers

    calls = []

    class Stub:
        pad_token_id = 0
        eos_token_id = 0

        def eval(self):
            return self

        def __call__(self, text, **kwargs):  # the loader's probe encoding
            return {"input_ids": [1]}

    def record(kind):
        def from_pretrained(path, **kwargs):
            calls.append((kind, path, kwargs))
            return Stub()

        return from_pretrained

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", record("model"))
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", record("tokenizer"))
    load_causal_lm("org/model")
    assert calls == [
        ("model", "org/model", {"use_safetensors": True, "trust_remote_code": False}),
        ("tokenizer", "org/model", {"trust_remote_code": False}),
    ]
    calls.clear()
    load_causal_lm("org/model", trust_remote_code=True, allow_pickle=True)
    assert calls[0][2] == {"use_safetensors": None, "trust_remote_code": True}
    assert calls[1][2] == {"trust_remote_code": True}
