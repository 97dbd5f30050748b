"""Tests of domainllm.quantize.gptq: real GPTQ with llm-compressor on a tiny Llama, on CPU."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from domainllm.errors import DataError, PipelineError
from domainllm.quantize.gptq import calibration_windows, parse_scheme, quantize_gptq
from tests.unit._tiny_lm import build_model, sample_texts, write_shards

QKW = dict(
    scheme="W4A16",
    group_size=32,
    actorder=None,
    dampening_frac=0.01,
    ignore=["lm_head"],
    calibration_samples=16,
    calibration_seq_len=64,
    seed=7,
    eval_windows=8,
)


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    import torch

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("gptq")
    model = build_model(root / "sft", hidden=64, intermediate=128, layers=2, train_steps=30)
    shards = write_shards(model, root / "shards", sample_texts(30))
    out = root / "sft-gptq"
    record = quantize_gptq(str(model), str(shards / "manifest.json"), str(out), **QKW)
    return {"root": root, "model": model, "shards": shards, "out": out, "record": record}


def test_config_says_4_bit_pack_quantized(quantized):
    cfg = json.loads((quantized["out"] / "config.json").read_text())
    q = cfg["quantization_config"]
    group = q["config_groups"]["group_0"]
    assert q["quant_method"] == "compressed-tensors"
    assert q["format"] == "pack-quantized"
    assert group["weights"]["num_bits"] == 4
    assert group["weights"]["group_size"] == 32
    assert group["weights"]["actorder"] is None
    assert q["ignore"] == ["lm_head"]


def test_folder_has_tokenizer_and_report(quantized):
    out = quantized["out"]
    assert (out / "model.safetensors").is_file()
    assert (out / "tokenizer.json").is_file()
    rec = json.loads((out / "quantize.json").read_text())
    assert rec == quantized["record"]
    assert rec["bits"] == 4 and rec["group_size"] == 32 and rec["scheme"] == "W4A16"
    assert rec["calibration_samples"] == 16 and rec["eval_windows"] == 8
    assert rec["weights_bytes_after"] < rec["weights_bytes_before"]
    for key in ("perplexity_before", "perplexity_after", "perplexity_rtn"):
        assert math.isfinite(rec[key]) and rec[key] > 1
    # 4-bit GPTQ of a briefly trained model: close to full precision, far from uniform guessing.
    assert rec["perplexity_after"] < 1.5 * rec["perplexity_before"]
    # No scratch folders are left beside the output.
    assert sorted(p.name for p in quantized["root"].iterdir()) == ["sft", "sft-gptq", "shards"]


def test_loads_on_cpu_with_finite_logits_and_generates(quantized):
    import torch

    from domainllm.infer import SamplingParams, get_backend
    from domainllm.models.loading import load_causal_lm

    model, tok = load_causal_lm(str(quantized["out"]))
    ids = tok("当連結会計年度の売上高は増加しました。", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert logits.shape[-1] == len(tok)
    assert torch.isfinite(logits).all()
    # The quantised weights differ from the full-precision ones (they were rounded).
    fp, _ = load_causal_lm(str(quantized["model"]))
    w_q = model.model.layers[0].mlp.down_proj.weight.float()
    w_fp = fp.model.layers[0].mlp.down_proj.weight.float()
    assert not torch.equal(w_q, w_fp)
    assert (w_q - w_fp).abs().max() < w_fp.abs().max()

    backend = get_backend("transformers", model=str(quantized["out"]), device="cpu")
    gen = backend.generate(["売上高について説明してください。"], SamplingParams(max_new_tokens=5))[
        0
    ]
    assert 1 <= gen.output_tokens <= 5


def test_same_seed_same_quantized_weights(quantized, tmp_path):
    from domainllm.io import sha256_file

    out = tmp_path / "again"
    quantize_gptq(str(quantized["model"]), str(quantized["shards"]), str(out), **QKW)
    assert sha256_file(out / "model.safetensors") == sha256_file(
        quantized["out"] / "model.safetensors"
    )


def test_8_bit_with_activation_ordering(quantized, tmp_path):
    out = tmp_path / "w8"
    rec = quantize_gptq(
        str(quantized["model"]),
        str(quantized["shards"]),
        str(out),
        **{**QKW, "scheme": "W8A16", "actorder": "weight", "group_size": 64},
    )
    weights = json.loads((out / "config.json").read_text())["quantization_config"]["config_groups"][
        "group_0"
    ]["weights"]
    assert (
        weights["num_bits"] == 8 and weights["actorder"] == "weight" and weights["group_size"] == 64
    )
    assert rec["bits"] == 8
    # 8 bits keep the model closer to full precision than 4 bits do.
    gap8 = abs(rec["perplexity_after"] - rec["perplexity_before"])
    gap4 = abs(quantized["record"]["perplexity_after"] - quantized["record"]["perplexity_before"])
    assert gap8 < gap4 + 1e-6


def test_group_size_must_divide_layer_width(quantized, tmp_path):
    out = tmp_path / "bad"
    with pytest.raises(PipelineError, match="quantize.group_size"):
        quantize_gptq(
            str(quantized["model"]), str(quantized["shards"]), str(out), **{**QKW, "group_size": 48}
        )
    assert not out.exists()


def test_too_few_tokens_for_calibration(quantized, tmp_path):
    out = tmp_path / "bad"
    with pytest.raises(DataError, match="calibration_samples"):
        quantize_gptq(
            str(quantized["model"]),
            str(quantized["shards"]),
            str(out),
            **{**QKW, "calibration_samples": 10**6},
        )
    assert not out.exists()


def test_calibration_windows_disjoint_and_seeded():
    tokens = np.arange(1000)
    calib, held = calibration_windows(tokens, 10, 30, 20, seed=1)
    assert calib.shape == (30, 10) and held.shape == (20, 10)
    starts_c, starts_h = set(calib[:, 0].tolist()), set(held[:, 0].tolist())
    assert not starts_c & starts_h
    assert all(s % 10 == 0 for s in starts_c | starts_h)
    again, _ = calibration_windows(tokens, 10, 30, 20, seed=1)
    other, _ = calibration_windows(tokens, 10, 30, 20, seed=2)
    assert np.array_equal(calib, again) and not np.array_equal(calib, other)
    # Fewer windows than asked for held-out: take what is left.
    _, few = calibration_windows(tokens, 10, 95, 20, seed=1)
    assert few.shape == (5, 10)


def test_parse_scheme():
    assert parse_scheme("W4A16") == (4, 16)
    assert parse_scheme("W8A16") == (8, 16)
    with pytest.raises(PipelineError, match="quantize.scheme"):
        parse_scheme("int4")
