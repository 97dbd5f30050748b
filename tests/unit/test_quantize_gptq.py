"""Tests of domainllm.quantize.gptq: real GPTQ with llm-compressor on a tiny Llama, on CPU."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from domainllm.errors import DataError, PipelineError
from domainllm.quantize.gptq import (
    calibration_windows,
    parse_scheme,
    quantize_gptq,
    quantize_rtn,
)
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
    for key in ("shard_perplexity_before", "shard_perplexity_after"):
        assert math.isfinite(rec[key]) and rec[key] > 1
    # 4-bit GPTQ of a briefly trained model: close to full precision, far from uniform guessing.
    assert rec["shard_perplexity_after"] < 1.5 * rec["shard_perplexity_before"]
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
    gap8 = abs(rec["shard_perplexity_after"] - rec["shard_perplexity_before"])
    q4 = quantized["record"]
    gap4 = abs(q4["shard_perplexity_after"] - q4["shard_perplexity_before"])
    assert gap8 < gap4 + 1e-6


def test_group_size_must_divide_layer_width(quantized, tmp_path):
    out = tmp_path / "bad"
    with pytest.raises(PipelineError, match="quantize.group_size"):
        quantize_gptq(
            str(quantized["model"]), str(quantized["shards"]), str(out), **{**QKW, "group_size": 48}
        )
    assert not out.exists()


def test_group_activation_ordering_is_refused_before_quantising(quantized, tmp_path):
    out = tmp_path / "bad"
    with pytest.raises(PipelineError, match="quantize.actorder"):
        quantize_gptq(
            str(quantized["model"]),
            str(quantized["shards"]),
            str(out),
            **{**QKW, "actorder": "group"},
        )
    assert not out.exists()


def test_rtn_baseline_has_the_same_format_without_calibration(quantized, tmp_path):
    import torch
    import yaml
    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32
    from safetensors.torch import load_file

    out = tmp_path / "rtn"
    rec = quantize_rtn(
        str(quantized["model"]), str(out), scheme="W4A16", group_size=32, ignore=["lm_head"]
    )
    assert rec["method"] == "rtn" and rec["bits"] == 4 and rec["group_size"] == 32
    recipe = yaml.safe_load((out / "recipe.yaml").read_text())
    (modifier,) = recipe["default_stage"]["default_modifiers"]
    assert modifier == "QuantizationModifier"
    gptq_q = json.loads((quantized["out"] / "config.json").read_text())["quantization_config"]
    rtn_q = json.loads((out / "config.json").read_text())["quantization_config"]
    assert rtn_q == gptq_q  # what a loader reads is the same: only the weights differ
    assert rec["weights_bytes_after"] == quantized["record"]["weights_bytes_after"]
    # Checked against round-to-nearest written here: every 4-bit level is the weight
    # divided by its group's scale (absmax / 7.5), rounded and clamped to [-8, 7].
    full = load_file(quantized["model"] / "model.safetensors")
    name = "model.layers.0.mlp.down_proj"

    def share_at_nearest(folder):
        w = load_file(folder / "model.safetensors")
        shape = torch.Size(w[f"{name}.weight_shape"].tolist())
        q = unpack_from_int32(w[f"{name}.weight_packed"], 4, shape)
        scale = w[f"{name}.weight_scale"].repeat_interleave(32, 1)
        nearest = torch.clamp(torch.round(full[f"{name}.weight"] / scale), -8, 7)
        return (q == nearest).float().mean().item()

    assert share_at_nearest(out) == 1.0
    # GPTQ moves weights off the nearest level to compensate the rounding error.
    assert share_at_nearest(quantized["out"]) < 0.95
    assert (out / "tokenizer.json").is_file() and (out / "quantize.json").is_file()


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


def _flat(obj, prefix=""):
    """A nested dict/list as {"a.b.0": leaf}."""
    if isinstance(obj, dict):
        return {k: v for key, sub in obj.items() for k, v in _flat(sub, f"{prefix}{key}.").items()}
    if isinstance(obj, list):
        return {k: v for i, sub in enumerate(obj) for k, v in _flat(sub, f"{prefix}{i}.").items()}
    return {prefix.rstrip("."): obj}


def _changed(a: dict, b: dict) -> set[str]:
    fa, fb = _flat(a), _flat(b)
    return {k for k in fa.keys() | fb.keys() if fa.get(k, "<absent>") != fb.get(k, "<absent>")}


def _spied_run(model, shards, out, **kw) -> dict:
    """quantize_gptq with llm-compressor's oneshot wrapped to record what it was given.

    Returns the record, recipe.yaml, config.json's quantization_config, the modifier
    oneshot ran and every distinct input row the model saw during calibration.
    """
    import llmcompressor
    import torch
    import yaml

    real = llmcompressor.oneshot
    seen: dict = {"rows": set(), "modifiers": []}

    def spy(model=None, recipe=None, **kwargs):
        seen["modifiers"].append(recipe)
        seen["oneshot"] = {k: kwargs.get(k) for k in ("num_calibration_samples", "max_seq_length")}

        def hook(_module, args):
            seen["rows"].update(tuple(r) for r in args[0].tolist())

        handle = model.model.embed_tokens.register_forward_pre_hook(hook)
        try:
            return real(model=model, recipe=recipe, **kwargs)
        finally:
            handle.remove()

    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(llmcompressor, "oneshot", spy)
        record = quantize_gptq(str(model), str(shards), str(out), **kw)
    return {
        "out": out,
        "record": record,
        "recipe": yaml.safe_load((out / "recipe.yaml").read_text()),
        "config": json.loads((out / "config.json").read_text())["quantization_config"],
        **seen,
    }


KNOB_RUN = {**QKW, "eval_windows": 0}
# Each knob, a changed value, and where the change must show: paths in recipe.yaml
# (llm-compressor's record of the modifier it ran) and in config.json's
# quantization_config (what transformers and vLLM read).
GPTQ_RECIPE = "default_stage.default_modifiers.GPTQModifier"
GROUP_WEIGHTS = "config_groups.group_0.weights"
KNOBS = {
    "group_size": (
        64,
        {f"{GPTQ_RECIPE}.{GROUP_WEIGHTS}.group_size"},
        {f"{GROUP_WEIGHTS}.group_size"},
    ),
    "actorder": (
        "weight",
        {f"{GPTQ_RECIPE}.{GROUP_WEIGHTS}.actorder", f"{GPTQ_RECIPE}.actorder"},
        {f"{GROUP_WEIGHTS}.actorder"},
    ),
    "dampening_frac": (0.2, {f"{GPTQ_RECIPE}.dampening_frac"}, set()),
    "ignore": (
        ["lm_head", "re:.*down_proj$"],
        {f"{GPTQ_RECIPE}.ignore.1"},
        {"ignore.0", "ignore.1", "ignore.2"},  # config.json lists the modules matched
    ),
    "calibration_samples": (8, set(), set()),
    "calibration_seq_len": (32, set(), set()),
}


@pytest.fixture(scope="module")
def knob_baseline(quantized, tmp_path_factory):
    out = tmp_path_factory.mktemp("knobs") / "baseline"
    return _spied_run(quantized["model"], quantized["shards"], out, **KNOB_RUN)


def test_oneshot_calibrates_on_the_drawn_windows(quantized, knob_baseline):
    from domainllm.corpus.shards import load_tokens

    calib, _ = calibration_windows(load_tokens(quantized["shards"]), 64, 16, 0, seed=7)
    assert knob_baseline["oneshot"] == {"num_calibration_samples": 16, "max_seq_length": 64}
    # The model saw exactly the configured windows during calibration, nothing else.
    assert knob_baseline["rows"] == {tuple(r) for r in calib.tolist()}
    (modifier,) = knob_baseline["modifiers"]
    assert type(modifier).__name__ == "GPTQModifier"


@pytest.mark.parametrize("knob", list(KNOBS))
def test_each_knob_reaches_the_quantiser_and_the_record(quantized, knob_baseline, knob, tmp_path):
    import torch
    from safetensors.torch import load_file

    value, recipe_paths, config_paths = KNOBS[knob]
    run = _spied_run(
        quantized["model"], quantized["shards"], tmp_path / "q", **{**KNOB_RUN, knob: value}
    )
    base = knob_baseline
    assert run["record"][knob] == value
    # Timings vary; sizes follow from the group size and the ignored layers.
    derived = {"gptq_seconds", "seconds", "weights_bytes_after", "compression_ratio"}
    assert {k.split(".")[0] for k in _changed(base["record"], run["record"]) - derived} == {knob}
    assert _changed(base["recipe"], run["recipe"]) == recipe_paths
    assert _changed(base["config"], run["config"]) == config_paths
    (modifier,) = run["modifiers"]
    if knob in ("actorder", "dampening_frac"):
        assert getattr(modifier, knob) == value
    if knob == "calibration_samples":
        assert run["oneshot"]["num_calibration_samples"] == value and len(run["rows"]) == value
    if knob == "calibration_seq_len":
        assert run["oneshot"]["max_seq_length"] == value
        assert {len(r) for r in run["rows"]} == {value}
    # Every knob changes the quantised weights, not only the record.
    w_base = load_file(base["out"] / "model.safetensors")
    w_run = load_file(run["out"] / "model.safetensors")
    assert w_base.keys() != w_run.keys() or any(
        not torch.equal(w_base[k], w_run[k]) for k in w_base
    )
    if knob == "ignore":
        assert sorted(run["config"]["ignore"]) == [
            "lm_head",
            "model.layers.0.mlp.down_proj",
            "model.layers.1.mlp.down_proj",
        ]
        assert "model.layers.0.mlp.down_proj.weight" in w_run
        assert "model.layers.0.mlp.down_proj.weight_packed" not in w_run
