"""Instruction tuning with a chat template and the loss on answers only.

Each example is tokenised in two parts: the prompt (the user turn plus the
assistant header, exactly what generation feeds the model, via
``apply_chat_template(add_generation_prompt=True)``) and the answer followed by
eos. Labels are -100 on the prompt and on padding, so only answer tokens (and
the eos that teaches the model to stop) carry loss. Batches are right-padded to
their longest example. Checkpoints and resumption work as in CPT.

Usage (one CPU process; the embedded default's scale):
    python -m domainllm.train.sft --base results/models/tiny-domain/cpt \\
        --data results/data/sft.parquet --output /tmp/sft \\
        --checkpoint-dir /tmp/sft-checkpoints --max-steps 120 --batch-size 8 --max-len 256 \\
        --threads 1

Several GPUs: ``deepspeed --num_gpus N -m domainllm.train.sft ... --deepspeed
config/deepspeed/zero2.json --bf16`` (or ``torchrun --nproc_per_node N -m ...``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from domainllm.errors import DataError
from domainllm.train import common
from domainllm.train.chat import format_prompt

log = logging.getLogger(__name__)

IGNORE_INDEX = -100


def _ids(tokenizer, text: str) -> list[int]:
    # The template already writes bos; the tokenizer must not add another.
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def build_example(tokenizer, instruction: str, answer: str, max_len: int) -> dict[str, Any]:
    """Tokenise one example into ``input_ids`` and answer-only ``labels``.

    The answer keeps what it needs of ``max_len`` but the prompt always keeps at
    least half; an over-long instruction is cut (at token level, then re-rendered
    so the assistant header stays intact), then an over-long answer is cut (and
    loses its eos, since it no longer ends there).

    Returns:
        ``{"input_ids", "labels", "prompt_len", "truncated"}``.
    """
    answer_ids = _ids(tokenizer, answer) + [tokenizer.eos_token_id]
    prompt_ids = _ids(tokenizer, format_prompt(tokenizer, instruction))
    budget = max(max_len - len(answer_ids), max_len // 2)
    truncated = False
    if len(prompt_ids) > budget:
        truncated = True
        overhead = len(_ids(tokenizer, format_prompt(tokenizer, "")))
        instr_ids = _ids(tokenizer, instruction)
        keep = max(budget - overhead, 1)
        while True:
            cut = tokenizer.decode(instr_ids[:keep], skip_special_tokens=True)
            prompt_ids = _ids(tokenizer, format_prompt(tokenizer, cut))
            if len(prompt_ids) <= budget or keep <= 1:
                break
            keep -= max(1, len(prompt_ids) - budget)
        prompt_ids = prompt_ids[:budget]
    room = max_len - len(prompt_ids)
    if len(answer_ids) > room:
        truncated = True
        answer_ids = answer_ids[:room]
    return {
        "input_ids": prompt_ids + answer_ids,
        "labels": [IGNORE_INDEX] * len(prompt_ids) + answer_ids,
        "prompt_len": len(prompt_ids),
        "truncated": truncated,
    }


class AnswerOnlyCollator:
    """Right-pad a list of examples; padding gets attention 0 and label -100."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = int(pad_token_id)

    def __call__(self, features: list[dict]) -> dict:
        import torch

        width = max(len(f["input_ids"]) for f in features)
        n = len(features)
        input_ids = torch.full((n, width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
        attention = torch.zeros((n, width), dtype=torch.long)
        for i, f in enumerate(features):
            k = len(f["input_ids"])
            input_ids[i, :k] = torch.tensor(f["input_ids"], dtype=torch.long)
            labels[i, :k] = torch.tensor(f["labels"], dtype=torch.long)
            attention[i, :k] = 1
        return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


class ExampleList:
    """A torch-style Dataset over pre-tokenised examples."""

    def __init__(self, examples: list[dict]):
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict:
        ex = self.examples[i]
        return {"input_ids": ex["input_ids"], "labels": ex["labels"]}


def read_sft_data(path: str | Path) -> list[dict]:
    """Read (instruction, output) rows from the filtered SFT Parquet table."""
    import polars as pl

    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: SFT data file does not exist")
    df = pl.read_parquet(p)
    missing = [c for c in ("instruction", "output") if c not in df.columns]
    if missing:
        raise DataError(
            f"{p}: missing column(s) {', '.join(missing)} (has {', '.join(df.columns)})"
        )
    if df.height == 0:
        raise DataError(f"{p}: no training examples")
    rows = df.select("instruction", "output").to_dicts()
    for i, r in enumerate(rows):
        if r["instruction"] is None or r["output"] is None:
            raise DataError(f"{p}: row {i} has a null instruction or output")
    return rows


def tokenize_examples(tokenizer, rows: list[dict], max_len: int) -> list[dict]:
    """``build_example`` over all rows, with a progress bar."""
    from tqdm import tqdm

    return [
        build_example(tokenizer, r["instruction"], r["output"], max_len)
        for r in tqdm(rows, desc="tokenise SFT", unit="ex", mininterval=2)
    ]


def train_sft(
    base: str,
    data: str,
    output: str,
    *,
    checkpoint_dir: str,
    max_steps: int,
    batch_size: int,
    max_len: int,
    learning_rate: float,
    save_steps: int,
    seed: int,
    gradient_accumulation_steps: int = 1,
    warmup_ratio: float = 0.05,
    deepspeed: str | None = None,
    bf16: bool = False,
    save_total_limit: int = 2,
    logging_steps: int = 5,
    peak_flops: float | None = None,
    threads: int | None = None,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
) -> dict[str, Any]:
    """Instruction-tune ``base`` on the SFT table ``data``; save to ``output``.

    Args:
        base: save_pretrained folder (usually the CPT model).
        data: Parquet with ``instruction`` and ``output`` columns (R/data/sft.parquet).
        output: the trained folder (model, tokenizer with chat template, metrics, plot).
        checkpoint_dir: Trainer checkpoints; the newest complete one is resumed.
        max_steps: optimiser steps in total.
        batch_size: examples per device per micro-batch.
        max_len: longest tokenised example (prompt + answer).
        learning_rate: peak learning rate (cosine schedule).
        save_steps: checkpoint interval.
        seed: seeds data order and every RNG.
        gradient_accumulation_steps: micro-batches per optimiser step.
        warmup_ratio: share of steps warming up.
        deepspeed: DeepSpeed JSON config, or None.
        bf16: bfloat16 mixed precision (GPUs).
        save_total_limit: checkpoints kept.
        logging_steps: loss-logging interval.
        threads: torch CPU threads (the job's share of cores; None keeps torch's default).
        peak_flops: peak FLOP/s per device for MFU (None: known GPUs, else null).
        trust_remote_code: allow custom model code in ``base``.
        allow_pickle: allow pickled (.bin) weights in ``base``.

    Returns:
        The metrics written to train_metrics.json.
    """
    from transformers import set_seed

    common.set_threads(threads)
    set_seed(seed)
    rows = read_sft_data(data)
    args = common.training_arguments(
        checkpoint_dir=checkpoint_dir,
        max_steps=max_steps,
        batch_size=batch_size,
        gradient_accumulation_steps=gradient_accumulation_steps,
        learning_rate=learning_rate,
        warmup_ratio=warmup_ratio,
        save_steps=save_steps,
        save_total_limit=save_total_limit,
        logging_steps=logging_steps,
        seed=seed,
        deepspeed=deepspeed,
        bf16=bf16,
        count_tokens="non_padding",
        drop_last=False,
        # Batches of similar lengths waste less compute on padding (random mega-batches).
        group_by_length=True,
    )
    run = {
        "stage": "sft",
        "base": common.folder_fingerprint(base),
        "data": common.folder_fingerprint(data),
        "max_len": max_len,
        "batch_size": batch_size,
        "gradient_accumulation_steps": gradient_accumulation_steps,
        "learning_rate": learning_rate,
        "warmup_ratio": warmup_ratio,
        "seed": seed,
        "bf16": bf16,
        "deepspeed": Path(deepspeed).read_text(encoding="utf-8") if deepspeed else None,
        # ZeRO checkpoints are partitioned per rank; plain ones resume on any count.
        "world_size": args.world_size if deepspeed else None,
    }

    def build(model, tokenizer):
        examples = tokenize_examples(tokenizer, rows, max_len)
        fields = {
            "examples": len(examples),
            "truncated_examples": int(sum(e["truncated"] for e in examples)),
            "answer_tokens": int(sum(len(e["input_ids"]) - e["prompt_len"] for e in examples)),
        }
        return ExampleList(examples), AnswerOnlyCollator(tokenizer.pad_token_id), fields

    return common.run_stage(
        base=base,
        output=output,
        checkpoint_dir=checkpoint_dir,
        args=args,
        run=run,
        build=build,
        extra={"stage": "sft", "base": str(base), "data": str(data), "max_len": max_len},
        peak_flops=peak_flops,
        trust_remote_code=trust_remote_code,
        allow_pickle=allow_pickle,
        title=f"SFT of {Path(base).name}",
    )


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (see the module docstring)."""
    from domainllm.logs import log_to

    parser = argparse.ArgumentParser(
        prog="python -m domainllm.train.sft",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--base", required=True, help="save_pretrained folder to tune")
    parser.add_argument("--data", required=True, help="SFT Parquet (instruction, output)")
    parser.add_argument("--output", required=True, help="trained model folder")
    parser.add_argument("--max-len", type=int, default=256)
    common.add_common_cli(parser)
    a = parser.parse_args(argv)
    with log_to(a.log if common.is_main_process() else None):
        train_sft(
            a.base,
            a.data,
            a.output,
            checkpoint_dir=a.checkpoint_dir,
            max_steps=a.max_steps,
            batch_size=a.batch_size,
            max_len=a.max_len,
            learning_rate=a.learning_rate,
            save_steps=a.save_steps,
            seed=a.seed,
            gradient_accumulation_steps=a.gradient_accumulation_steps,
            warmup_ratio=a.warmup_ratio,
            deepspeed=a.deepspeed,
            bf16=a.bf16,
            logging_steps=a.logging_steps,
            peak_flops=a.peak_flops,
            threads=a.threads,
            trust_remote_code=a.trust_remote_code,
            allow_pickle=a.allow_pickle,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
