"""The quality table of a quantised model: GPTQ against full precision and round-to-nearest.

For the full-precision model, its GPTQ folder and its RTN folder (same bits, group
size and ignored layers) the table gives

- perplexity and bits per character on held-out domain text, scored with the
  sliding window of :func:`domainllm.evaluate.likelihood.domain_bits_per_char`
  (the evaluation table's metric, so the numbers compare with it);
- bytes of the weight files on disk;
- generation tokens/s with the ``transformers`` backend, greedy, on a fixed
  prompt set (the first evaluation prompts), the median of a few timed passes
  after a warm-up; and how many
  prompts get the same greedy answer as the full-precision model.

Usage::

    python -c "from domainllm.quantize.quality import quantize_quality; quantize_quality(
        'results/models/m/sft', 'results/models/m/sft-gptq', 'results/models/m/sft-rtn',
        'results/data/domain_heldout.parquet', 'results/data/eval_prompts.parquet',
        'quality.json', 'quality.md', model_name='m')"
"""

from __future__ import annotations

import gc
import logging
import math
import statistics
import time
from pathlib import Path

from domainllm.errors import DataError, PipelineError
from domainllm.io import read_json, write_json, write_text
from domainllm.quantize.gptq import weights_bytes

log = logging.getLogger(__name__)

# The rows of the table, in order: name -> quantize.json method (None: full precision).
ROWS = {"full": None, "gptq": "gptq", "rtn": "rtn"}
# Settings GPTQ and RTN must share for the comparison to mean anything.
SHARED = ("scheme", "bits", "group_size", "ignore")
# GPTQ's own settings, copied into the table from its quantize.json.
GPTQ_KNOBS = ("actorder", "dampening_frac", "calibration_samples", "calibration_seq_len")


def _recipe(folder: str, method: str) -> dict:
    """quantize.json of a quantised folder, checked to be made by ``method``."""
    path = Path(folder) / "quantize.json"
    if not path.is_file():
        raise DataError(f"{folder}: no quantize.json (not written by domainllm.quantize)")
    rec = read_json(path)
    if rec.get("method") != method:
        raise DataError(f"{path}: method is {rec.get('method')!r}, expected {method!r}")
    return rec


def _weights_in_memory(model) -> str:
    """How the model's linear weights sat in memory once it had run.

    transformers loads a compressed-tensors folder with packed integer weights and,
    on CPU, turns them back into dense floating-point weights at the first forward
    pass: generation then runs at full-precision speed and memory.
    """
    if getattr(model.config, "quantization_config", None) is None:
        return "full precision"
    if any(hasattr(m, "weight_packed") for m in model.modules()):
        return "packed"
    return "dequantised"


def _perplexity(folder, texts, *, seq_len, batch_size, device, trust_remote_code) -> dict:
    from domainllm.evaluate.likelihood import domain_bits_per_char
    from domainllm.models.loading import load_for_inference

    model, tokenizer = load_for_inference(
        folder, trust_remote_code=trust_remote_code, device=device
    )
    out = domain_bits_per_char(model, tokenizer, texts, seq_len, batch_size=batch_size)
    out["weights_in_memory"] = _weights_in_memory(model)
    del model
    gc.collect()
    return out


def _generation_speed(
    folder, prompts, *, max_new_tokens, batch_size, repeats, device, trust_remote_code
) -> dict:
    from domainllm.infer import SamplingParams, get_backend

    backend = get_backend(
        "transformers",
        model=folder,
        device=device,
        batch_size=batch_size,
        trust_remote_code=trust_remote_code,
    )
    passes = []
    try:
        # Warm-up: the first generate call pays one-off costs (allocations, kernels).
        backend.generate(prompts[:1], SamplingParams(max_new_tokens=2))
        greedy = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0)
        for _ in range(repeats):
            t0 = time.perf_counter()
            gens = backend.generate(prompts, greedy)
            passes.append(time.perf_counter() - t0)
    finally:
        backend.close()
        gc.collect()
    tokens = sum(g.output_tokens for g in gens)
    # Greedy passes generate the same tokens; the median pass resists a busy machine.
    seconds = statistics.median(passes)
    return {
        "output_tokens": tokens,
        "generate_seconds": seconds,
        "generate_passes_seconds": passes,
        "tokens_per_s": tokens / seconds if seconds > 0 else float("nan"),
        "texts": [g.text for g in gens],
    }


def _fmt_bytes(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"


def quality_markdown(record: dict) -> str:
    """The quality record as a Markdown table with the settings it was measured under."""
    h, g = record["heldout"], record["generation"]
    lines = [
        f"# Quantisation quality: {record['model']} ({record['scheme']}, "
        f"group size {record['group_size']})",
        "",
        f"Held-out domain text: {h['texts']} texts, {h['chars']} characters, {h['tokens']} "
        f"predicted tokens, window {h['seq_len']}. Generation: {g['backend']} on {g['device']}, "
        f"{g['threads']} thread(s), greedy, {g['prompts']} prompts x at most "
        f"{g['max_new_tokens']} new tokens, batch {g['batch_size']}, median of {g['repeats']} "
        "timed passes after a warm-up.",
        "",
        "| model | perplexity | vs full | bits/char | weights on disk | smaller by | "
        "tokens/s | weights in memory | same greedy output |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for name, row in record["models"].items():
        lines.append(
            f"| {name} | {row['perplexity']:.4f} | {row['perplexity_vs_full']:+.2%} | "
            f"{row['bits_per_char']:.4f} | {_fmt_bytes(row['weights_bytes'])} | "
            f"{row['compression']:.2f}x | {row['tokens_per_s']:.1f} | {row['weights_in_memory']} | "
            f"{row['same_output_as_full']}/{g['prompts']} |"
        )
    lines += [
        "",
        f"GPTQ perplexity / RTN perplexity: {record['gptq_vs_rtn_perplexity']:.4f} "
        "(below 1: GPTQ is better).",
        "",
    ]
    return "\n".join(lines)


def quantize_quality(
    full: str,
    gptq: str,
    rtn: str,
    heldout: str,
    prompts: str,
    output_json: str,
    output_md: str,
    *,
    model_name: str,
    seq_len: int = 128,
    batch_size: int = 8,
    n_prompts: int = 8,
    max_new_tokens: int = 32,
    generate_batch_size: int = 1,
    repeats: int = 3,
    device: str | None = "cpu",
    threads: int | None = None,
    trust_remote_code: bool = False,
) -> dict:
    """Measure the full-precision, GPTQ and RTN folders; write quality.json and quality.md.

    Args:
        full: the full-precision model folder the other two were quantised from.
        gptq: the GPTQ folder (:func:`domainllm.quantize.gptq.quantize_gptq`).
        rtn: the RTN folder (:func:`domainllm.quantize.gptq.quantize_rtn`), same scheme.
        heldout: Parquet table with a ``text`` column of held-out domain text.
        prompts: the evaluation prompts (Parquet: id, prompt, ...); the first
            ``n_prompts`` are generated from.
        output_json, output_md: the table, as JSON and as Markdown.
        model_name: named in the table.
        seq_len: perplexity window (the evaluation's, so the numbers compare).
        batch_size: windows per forward pass for perplexity.
        n_prompts: prompts generated from for tokens/s.
        max_new_tokens: tokens generated per prompt at most (greedy).
        generate_batch_size: prompts per ``generate`` call.
        repeats: timed passes over the prompts; tokens/s is from the median pass.
        device: "cpu", "cuda" or None (CUDA when available) for every measurement.
        threads: torch CPU threads (None keeps torch's default).
        trust_remote_code: allow custom model code in the folders.

    Returns:
        The quality.json record: ``models`` maps full, gptq and rtn to their
        perplexity, bits_per_char, weights_bytes, tokens_per_s and the ratios to full.

    Raises:
        DataError: a folder without quantize.json or made by the other method, bad
            tables.
        PipelineError: GPTQ and RTN quantised with different settings, or a
            non-finite measurement.
    """
    import torch

    from domainllm.infer.generation import read_prompts, read_table
    from domainllm.models.loading import default_device, set_threads

    t0 = time.perf_counter()
    set_threads(threads)
    device = device or default_device()
    recipes = {"gptq": _recipe(gptq, "gptq"), "rtn": _recipe(rtn, "rtn")}
    differ = [k for k in SHARED if recipes["gptq"].get(k) != recipes["rtn"].get(k)]
    if differ:
        pairs = "; ".join(
            f"{k}: {recipes['gptq'].get(k)!r} vs {recipes['rtn'].get(k)!r}" for k in differ
        )
        raise PipelineError(
            f"{gptq} and {rtn} were quantised with different {', '.join(differ)}: {pairs}"
        )
    texts = [t for t in read_table(heldout, ("text",), rows="texts")["text"].to_list() if t]
    if not texts:
        raise DataError(f"{heldout}: every text is empty")
    prompt_list = read_prompts(prompts)["prompt"].to_list()[:n_prompts]

    folders = {"full": full, "gptq": gptq, "rtn": rtn}
    models: dict[str, dict] = {}
    outputs: dict[str, list[str]] = {}
    ppl_info = {}
    for name, folder in folders.items():
        with torch.inference_mode():
            ppl = _perplexity(
                folder,
                texts,
                seq_len=seq_len,
                batch_size=batch_size,
                device=device,
                trust_remote_code=trust_remote_code,
            )
        speed = _generation_speed(
            folder,
            prompt_list,
            max_new_tokens=max_new_tokens,
            batch_size=generate_batch_size,
            repeats=repeats,
            device=device,
            trust_remote_code=trust_remote_code,
        )
        outputs[name] = speed.pop("texts")
        ppl_info = {k: ppl[k] for k in ("tokens", "chars", "windows")}
        models[name] = {
            "path": str(folder),
            "method": ROWS[name],
            "perplexity": ppl["perplexity"],
            "bits_per_char": ppl["bits_per_char"],
            "weights_bytes": weights_bytes(folder),
            "weights_in_memory": ppl["weights_in_memory"],
            **speed,
        }
        log.info("%s: %s", name, models[name])
    base = models["full"]
    for name, row in models.items():
        row["perplexity_vs_full"] = row["perplexity"] / base["perplexity"] - 1
        row["compression"] = base["weights_bytes"] / row["weights_bytes"]
        row["tokens_per_s_vs_full"] = row["tokens_per_s"] / base["tokens_per_s"]
        row["same_output_as_full"] = sum(
            a == b for a, b in zip(outputs[name], outputs["full"], strict=True)
        )
    bad = {
        f"{name}.{k}": v
        for name, row in models.items()
        for k, v in row.items()
        if isinstance(v, float) and not math.isfinite(v)
    }
    if bad:
        raise PipelineError(f"{output_json}: non-finite measurements {bad}")
    rec = recipes["gptq"]
    record = {
        "model": model_name,
        "scheme": rec["scheme"],
        "bits": rec["bits"],
        "group_size": rec["group_size"],
        "ignore": rec["ignore"],
        "gptq": {k: rec.get(k) for k in GPTQ_KNOBS},
        "heldout": {"file": str(heldout), "texts": len(texts), "seq_len": seq_len, **ppl_info},
        "generation": {
            "backend": "transformers",
            "device": device,
            "threads": torch.get_num_threads(),
            "prompts": len(prompt_list),
            "max_new_tokens": max_new_tokens,
            "batch_size": generate_batch_size,
            "repeats": repeats,
            "temperature": 0.0,
        },
        "models": models,
        "gptq_vs_rtn_perplexity": models["gptq"]["perplexity"] / models["rtn"]["perplexity"],
        "seconds": time.perf_counter() - t0,
    }
    markdown = quality_markdown(record)
    write_json(record, output_json)
    write_text(markdown, output_md)
    log.info("wrote %s and %s", output_json, output_md)
    return record
