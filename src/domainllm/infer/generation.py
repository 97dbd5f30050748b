"""Generate answers to the evaluation prompts with one model version.

Reads R/data/eval_prompts.parquet (id, prompt, reference, eval_aspect) and writes
R/generations/<version>.parquet, in the prompts' order, with the columns of
:data:`OUTPUT_COLUMNS`: id, prompt, reference, output, prompt_tokens, output_tokens,
finish_reason ("stop" or "length"), truncated (the prompt was cut to fit the
context), and the settings that produced them: backend, max_new_tokens,
temperature, top_p, seed.
"""

from __future__ import annotations

import logging
import time

from domainllm.errors import DataError, PipelineError
from domainllm.infer.base import SamplingParams, get_backend

log = logging.getLogger(__name__)

PROMPT_COLUMNS = ("id", "prompt", "reference")
OUTPUT_COLUMNS = (
    "id",
    "prompt",
    "reference",
    "output",
    "prompt_tokens",
    "output_tokens",
    "finish_reason",
    "truncated",
    "backend",
    "max_new_tokens",
    "temperature",
    "top_p",
    "seed",
)


def read_table(path: str, columns: tuple[str, ...], *, rows: str = "rows"):
    """Read a Parquet table that must have ``columns`` and at least one row.

    Raises:
        DataError: naming ``path``, when it cannot be read, lacks a column or has no
            ``rows`` (the word used in the message).
    """
    import polars as pl

    try:
        df = pl.read_parquet(path)
    except Exception as e:  # noqa: BLE001 - polars raises several types for a bad file
        raise DataError(f"{path}: cannot read Parquet: {e}") from e
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {', '.join(missing)} (have {', '.join(df.columns)})"
        )
    if df.height == 0:
        raise DataError(f"{path}: no {rows}")
    return df


def read_prompts(path: str):
    """Read the evaluation prompts, checking the columns and that prompts are non-empty."""
    import polars as pl

    df = read_table(path, PROMPT_COLUMNS, rows="prompts")
    empty = df.with_row_index("row").filter(
        pl.col("prompt").is_null() | (pl.col("prompt").str.strip_chars() == "")
    )
    if empty.height:
        raise DataError(f"{path}: row {empty['row'][0]} (id {empty['id'][0]}) has an empty prompt")
    return df


def backend_kwargs(backend: str, options: dict | None) -> dict:
    """Constructor keywords of ``backend`` from its config block (``generate.<backend>``).

    A block's ``model`` (``generate.openai.model``) names the model on the server,
    so it becomes ``served_model``: ``model`` is always the local model folder.
    """
    out = dict(options or {})
    if "model" in out:
        out["served_model"] = out.pop("model")
    return out


def generate(
    model: str,
    prompts: str,
    output: str,
    *,
    backend: str = "transformers",
    max_new_tokens: int = 48,
    temperature: float = 0.0,
    top_p: float = 1.0,
    batch_size: int = 8,
    seed: int = 1234,
    chat: bool = True,
    overflow: str = "truncate",
    trust_remote_code: bool = False,
    backend_options: dict | None = None,
) -> dict:
    """Answer every evaluation prompt with ``model``; write the generations Parquet.

    Args:
        model: model folder of the version (for ``openai``: its tokenizer and chat template).
        prompts: eval_prompts.parquet.
        output: generations Parquet to write (atomically; nothing is written on failure).
        backend: registered backend name ("transformers", "vllm", "openai").
        max_new_tokens: tokens generated per prompt at most.
        temperature: 0 is greedy.
        top_p: nucleus mass when sampling.
        batch_size: prompts per batch (transformers backend).
        seed: seeds sampling.
        chat: apply the chat template.
        overflow: a prompt longer than the context: "truncate" (keep its end) or "error".
        trust_remote_code: allow custom model code from the model folder.
        backend_options: the backend's config block (``generate.vllm``, ``generate.openai``).

    Returns:
        Summary: prompts, tokens, truncated prompts, seconds, tokens per second.
    """
    import polars as pl

    from domainllm.io import write_parquet

    df = read_prompts(prompts)
    params = SamplingParams(
        max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed
    )
    t0 = time.perf_counter()
    engine = get_backend(
        backend,
        model=model,
        batch_size=batch_size,
        seed=seed,
        chat=chat,
        overflow=overflow,
        trust_remote_code=trust_remote_code,
        **backend_kwargs(backend, backend_options),
    )
    load_s = time.perf_counter() - t0
    try:
        t1 = time.perf_counter()
        gens = engine.generate(df["prompt"].to_list(), params)
        gen_s = time.perf_counter() - t1
    finally:
        engine.close()
    if len(gens) != df.height:
        raise PipelineError(
            f"backend {backend} returned {len(gens)} generations for {df.height} prompts"
        )
    n = df.height
    out = pl.DataFrame(
        {
            "id": df["id"].cast(pl.String),
            "prompt": df["prompt"],
            "reference": df["reference"],
            "output": [g.text for g in gens],
            "prompt_tokens": pl.Series([g.prompt_tokens for g in gens], dtype=pl.Int64),
            "output_tokens": pl.Series([g.output_tokens for g in gens], dtype=pl.Int64),
            "finish_reason": [g.finish_reason for g in gens],
            "truncated": pl.Series([g.truncated for g in gens], dtype=pl.Boolean),
            "backend": [backend] * n,
            "max_new_tokens": pl.Series([max_new_tokens] * n, dtype=pl.Int64),
            "temperature": pl.Series([float(temperature)] * n, dtype=pl.Float64),
            "top_p": pl.Series([float(top_p)] * n, dtype=pl.Float64),
            "seed": pl.Series([seed] * n, dtype=pl.Int64),
        }
    )
    write_parquet(out, output)
    tokens = int(out["output_tokens"].sum())
    summary = {
        "model": model,
        "backend": backend,
        "prompts": n,
        "output_tokens": tokens,
        "stopped": sum(g.finish_reason == "stop" for g in gens),
        "truncated_prompts": sum(g.truncated for g in gens),
        "load_seconds": load_s,
        "generate_seconds": gen_s,
        "tokens_per_second": tokens / gen_s if gen_s > 0 else None,
    }
    log.info("generation summary: %s", summary)
    return summary
