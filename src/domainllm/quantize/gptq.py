"""GPTQ post-training quantisation with llm-compressor, and its round-to-nearest baseline.

:func:`quantize_gptq` runs ``GPTQModifier`` through ``oneshot``, calibrated on
random windows (seeded) of the domain shards; other windows of the same shards,
never seen by calibration, give a quick perplexity check before and after, so a
broken quantisation fails here. :func:`quantize_rtn` runs ``QuantizationModifier``
with the same scheme, group size and ignored layers and no calibration data:
plain round-to-nearest, the baseline :mod:`domainllm.quantize.quality` compares
GPTQ with. Both write a compressed-tensors ``save_pretrained`` folder (vLLM and
transformers load it) with the tokenizer, llm-compressor's recipe.yaml and
quantize.json (the knobs and calibration actually used).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from domainllm.errors import DataError, PipelineError
from domainllm.io import atomic_path, write_json

log = logging.getLogger(__name__)

TARGETS = ["Linear"]
# Activation orderings llm-compressor's GPTQ runs ("group" is deprecated and refused).
ACTORDERS = (None, "weight")


def parse_scheme(scheme: str) -> tuple[int, int]:
    """Return (weight bits, activation bits) of a preset name like ``W4A16``."""
    m = re.fullmatch(r"W(\d+)A(\d+)", scheme)
    if not m:
        raise PipelineError(
            f"config key 'quantize.scheme': '{scheme}' is not of the form W<bits>A<bits>"
        )
    return int(m.group(1)), int(m.group(2))


def calibration_windows(
    tokens, seq_len: int, n_calib: int, n_eval: int, seed: int, *, source: str = "shards"
) -> tuple[np.ndarray, np.ndarray]:
    """Split the token stream into aligned windows; draw calibration and held-out ones.

    Args:
        tokens: 1-D array of token ids.
        seq_len: tokens per window.
        n_calib: calibration windows.
        n_eval: held-out windows for perplexity (fewer if the stream is short).
        seed: seeds the draw.
        source: named in the error message.

    Returns:
        Two int64 arrays of shape (n, seq_len): calibration and held-out windows, disjoint.
    """
    n_windows = len(tokens) // seq_len
    if n_windows < n_calib + 1:
        raise DataError(
            f"{source}: {len(tokens)} tokens make {n_windows} windows of {seq_len}; "
            f"'quantize.calibration_samples' = {n_calib} needs at least {n_calib + 1} "
            "(one left for held-out perplexity)"
        )
    order = np.random.default_rng(seed).permutation(n_windows)
    calib_idx = np.sort(order[:n_calib])
    eval_idx = np.sort(order[n_calib : n_calib + n_eval])

    def take(idx):
        rows = [np.asarray(tokens[i * seq_len : (i + 1) * seq_len]) for i in idx]
        return np.stack(rows).astype(np.int64) if rows else np.zeros((0, seq_len), np.int64)

    return take(calib_idx), take(eval_idx)


def window_perplexity(model, windows: np.ndarray, batch_size: int = 8) -> float:
    """Token-level perplexity of ``model`` over full windows (each predicts tokens 2..n)."""
    import torch

    device = next(model.parameters()).device
    total_nll, total_tokens = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(windows), batch_size):
            ids = torch.as_tensor(windows[start : start + batch_size], device=device)
            logits = model(input_ids=ids).logits.float()
            nll = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]),
                ids[:, 1:].reshape(-1),
                reduction="sum",
            )
            total_nll += float(nll)
            total_tokens += ids[:, 1:].numel()
    return float(np.exp(total_nll / total_tokens))


def weights_bytes(folder: str | os.PathLike) -> int:
    """Bytes of the weight files (safetensors, or pickled .bin) in a model folder."""
    files = list(Path(folder).glob("*.safetensors")) or list(Path(folder).glob("*.bin"))
    return sum(f.stat().st_size for f in files)


def quant_config_groups(scheme: str, group_size: int) -> dict:
    """The compressed-tensors config group for a preset scheme with our group size."""
    from compressed_tensors.quantization import QuantizationScheme
    from compressed_tensors.quantization.quant_scheme import preset_name_to_scheme

    try:
        preset = preset_name_to_scheme(scheme, TARGETS)
    except (KeyError, ValueError) as e:
        raise PipelineError(f"config key 'quantize.scheme': unknown preset '{scheme}': {e}") from e
    weights = preset.weights.model_copy(update={"group_size": group_size})
    group = QuantizationScheme(
        targets=TARGETS,
        weights=weights,
        input_activations=preset.input_activations,
        output_activations=preset.output_activations,
    )
    return {"group_0": group}


def build_recipe(
    method: str,
    *,
    scheme: str,
    group_size: int,
    actorder: str | None,
    dampening_frac: float,
    ignore: list[str],
):
    """The llm-compressor modifier: ``gptq`` (GPTQModifier) or ``rtn`` (QuantizationModifier)."""
    from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier

    groups = quant_config_groups(scheme, group_size)
    if method == "gptq":
        if actorder not in ACTORDERS:
            raise PipelineError(
                f"config key 'quantize.actorder': {actorder!r} is not one of "
                f"{', '.join(map(repr, ACTORDERS))} (llm-compressor's GPTQ supports only these)"
            )
        # actorder=None is passed explicitly: GPTQModifier's default turns static ordering on.
        return GPTQModifier(
            config_groups=groups,
            ignore=list(ignore),
            actorder=actorder,
            dampening_frac=dampening_frac,
        )
    if method == "rtn":
        return QuantizationModifier(config_groups=groups, ignore=list(ignore))
    raise PipelineError(f"unknown quantisation method '{method}' (gptq, rtn)")


def check_group_size(model, group_size: int, ignore: list[str]) -> None:
    """Fail before calibration if a targeted layer's width does not divide by the group size."""
    from compressed_tensors.utils import match_named_modules

    bad = [
        f"{name} ({module.weight.shape[-1]} columns)"
        for name, module in match_named_modules(model, TARGETS, ignore)
        if module.weight.shape[-1] >= group_size and module.weight.shape[-1] % group_size
    ]
    if bad:
        raise PipelineError(
            f"config key 'quantize.group_size' = {group_size} does not divide the input width of "
            f"{', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}; change it or add the layers "
            "to 'quantize.ignore'"
        )


def folder_perplexity(path, windows: np.ndarray, *, trust_remote_code: bool) -> float:
    """:func:`window_perplexity` of the model saved in ``path``, on the default device."""
    from domainllm.models.loading import load_for_inference

    model, _ = load_for_inference(str(path), trust_remote_code=trust_remote_code)
    return window_perplexity(model, windows)


def _quantize_to(
    method: str,
    model_dir: Path,
    out_dir: Path,
    calib: np.ndarray | None,
    *,
    trust_remote_code: bool,
    seed: int,
    recipe_kwargs: dict,
) -> None:
    """Run llm-compressor's oneshot with ``method`` and save a compressed folder at ``out_dir``."""
    import torch
    from llmcompressor import oneshot

    from domainllm.models.loading import load_causal_lm

    model, tokenizer = load_causal_lm(str(model_dir), trust_remote_code=trust_remote_code)
    check_group_size(model, recipe_kwargs["group_size"], recipe_kwargs["ignore"])
    recipe = build_recipe(method, **recipe_kwargs)
    kwargs = {}
    if calib is not None:
        from datasets import Dataset

        kwargs = dict(
            dataset=Dataset.from_dict(
                {"input_ids": calib.tolist(), "attention_mask": np.ones_like(calib).tolist()}
            ),
            max_seq_length=calib.shape[1],
            num_calibration_samples=len(calib),
            # The windows are already a seeded random draw; keep their order.
            shuffle_calibration_samples=False,
        )
    torch.manual_seed(seed)
    # oneshot may write caches or logs relative to the working directory: run it in a
    # scratch folder so nothing lands outside the declared output.
    with tempfile.TemporaryDirectory(prefix="oneshot-") as scratch, contextlib.chdir(scratch):
        model = oneshot(
            model=model,
            processor=tokenizer,
            recipe=recipe,
            trust_remote_code_model=trust_remote_code,
            **kwargs,
        )
    with warnings.catch_warnings():
        # llm-compressor marks modules as offloaded while they sit on the CPU; transformers
        # then warns about memory for 50 GB shards, which does not apply here.
        warnings.filterwarnings("ignore", message="Attempting to save a model with offloaded")
        model.save_pretrained(out_dir, save_compressed=True)
    tokenizer.save_pretrained(out_dir)
    del model


def _check_finite(output, values: dict[str, float]) -> None:
    for name, value in values.items():
        if not np.isfinite(value):
            raise PipelineError(f"{output}: perplexity {name} is not finite ({value})")


def quantize_gptq(
    model: str,
    shards: str,
    output: str,
    *,
    scheme: str = "W4A16",
    group_size: int = 128,
    actorder: str | None = None,
    dampening_frac: float = 0.01,
    ignore: list[str] | tuple[str, ...] = ("lm_head",),
    calibration_samples: int = 64,
    calibration_seq_len: int = 128,
    seed: int = 1234,
    trust_remote_code: bool = False,
    eval_windows: int = 32,
) -> dict:
    """Quantise ``model`` with GPTQ calibrated on domain shards; write a compressed folder.

    Args:
        model: save_pretrained folder of the full-precision model (with tokenizer).
        shards: shard folder (or its manifest.json) tokenised with the model's tokenizer.
        output: the quantised folder to write (atomically), with quantize.json inside.
        scheme: llm-compressor preset (W4A16, W8A16).
        group_size: weight columns sharing one scale.
        actorder: GPTQ activation ordering (None or "weight"; llm-compressor refuses "group").
        dampening_frac: Hessian dampening as a fraction of its mean diagonal.
        ignore: modules left in full precision.
        calibration_samples: calibration windows drawn from the shards.
        calibration_seq_len: tokens per window.
        seed: seeds the window draw and torch.
        trust_remote_code: allow custom model code in ``model``.
        eval_windows: held-out shard windows for the perplexity check (0 skips it).

    Returns:
        The quantize.json record.
    """
    import torch

    from domainllm.corpus.shards import load_tokens

    t0 = time.perf_counter()
    model_dir = Path(model).resolve()
    shard_dir = Path(shards)
    if shard_dir.name == "manifest.json":
        shard_dir = shard_dir.parent
    shard_dir = shard_dir.resolve()
    bits, act_bits = parse_scheme(scheme)
    ignore = list(ignore)
    torch.manual_seed(seed)

    tokens = load_tokens(shard_dir)
    calib, heldout = calibration_windows(
        tokens, calibration_seq_len, calibration_samples, eval_windows, seed, source=str(shard_dir)
    )
    log.info(
        "calibration: %d windows x %d tokens; held-out: %d",
        len(calib),
        calibration_seq_len,
        len(heldout),
    )
    ppl_before = None
    if len(heldout):
        ppl_before = folder_perplexity(model_dir, heldout, trust_remote_code=trust_remote_code)
        log.info("shard perplexity before: %.3f", ppl_before)

    Path(output).resolve().parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(output, directory=True) as tmp:
        t_gptq = time.perf_counter()
        _quantize_to(
            "gptq",
            model_dir,
            tmp,
            calib,
            trust_remote_code=trust_remote_code,
            seed=seed,
            recipe_kwargs=dict(
                scheme=scheme,
                group_size=group_size,
                actorder=actorder,
                dampening_frac=dampening_frac,
                ignore=ignore,
            ),
        )
        gptq_seconds = time.perf_counter() - t_gptq
        ppl_after = None
        if len(heldout):
            ppl_after = folder_perplexity(tmp, heldout, trust_remote_code=trust_remote_code)
            log.info("shard perplexity after: %.3f", ppl_after)
            _check_finite(output, {"before": ppl_before, "after GPTQ": ppl_after})
        before_bytes, after_bytes = weights_bytes(model_dir), weights_bytes(tmp)
        record = {
            "method": "gptq",
            "scheme": scheme,
            "bits": bits,
            "activation_bits": act_bits,
            "group_size": group_size,
            "actorder": actorder,
            "dampening_frac": dampening_frac,
            "ignore": ignore,
            "calibration_samples": int(len(calib)),
            "calibration_seq_len": calibration_seq_len,
            "eval_windows": int(len(heldout)),
            "seed": seed,
            "source_model": str(model),
            "shards": str(shards),
            "weights_bytes_before": before_bytes,
            "weights_bytes_after": after_bytes,
            "compression_ratio": before_bytes / after_bytes if after_bytes else None,
            # On shard windows disjoint from calibration: a quick check, not the quality
            # table (domainllm.quantize.quality measures held-out domain text).
            "shard_perplexity_before": ppl_before,
            "shard_perplexity_after": ppl_after,
            "gptq_seconds": gptq_seconds,
            "seconds": time.perf_counter() - t0,
        }
        write_json(record, tmp / "quantize.json")
    log.info("wrote %s: %s", output, record)
    return record


def quantize_rtn(
    model: str,
    output: str,
    *,
    scheme: str = "W4A16",
    group_size: int = 128,
    ignore: list[str] | tuple[str, ...] = ("lm_head",),
    seed: int = 1234,
    trust_remote_code: bool = False,
) -> dict:
    """Round-to-nearest baseline: ``model`` quantised with the scheme of GPTQ, no calibration.

    llm-compressor's ``QuantizationModifier`` with a weight-only scheme takes every
    group's scale from its min/max and rounds each weight to the nearest level:
    what GPTQ would do without its error compensation.

    Args:
        model: save_pretrained folder of the full-precision model (with tokenizer).
        output: the quantised folder to write (atomically), with quantize.json inside.
        scheme: llm-compressor preset (W4A16, W8A16); weight-only, as GPTQ's.
        group_size: weight columns sharing one scale.
        ignore: modules left in full precision.
        seed: seeds torch (RTN itself is deterministic).
        trust_remote_code: allow custom model code in ``model``.

    Returns:
        The quantize.json record.
    """
    t0 = time.perf_counter()
    model_dir = Path(model).resolve()
    bits, act_bits = parse_scheme(scheme)
    ignore = list(ignore)
    Path(output).resolve().parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(output, directory=True) as tmp:
        _quantize_to(
            "rtn",
            model_dir,
            tmp,
            None,
            trust_remote_code=trust_remote_code,
            seed=seed,
            recipe_kwargs=dict(
                scheme=scheme,
                group_size=group_size,
                actorder=None,
                dampening_frac=0.0,
                ignore=ignore,
            ),
        )
        before_bytes, after_bytes = weights_bytes(model_dir), weights_bytes(tmp)
        record = {
            "method": "rtn",
            "scheme": scheme,
            "bits": bits,
            "activation_bits": act_bits,
            "group_size": group_size,
            "ignore": ignore,
            "seed": seed,
            "source_model": str(model),
            "weights_bytes_before": before_bytes,
            "weights_bytes_after": after_bytes,
            "compression_ratio": before_bytes / after_bytes if after_bytes else None,
            "seconds": time.perf_counter() - t0,
        }
        write_json(record, tmp / "quantize.json")
    log.info("wrote %s: %s", output, record)
    return record
