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

import logging
import sys
from pathlib import Path
from typing import Any

from domainllm.errors import DataError
from domainllm.train import common
from domainllm.train.chat import format_prompt

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
# The entry point's required paths, in train_sft's argument order: {option: help}.
CLI_PATHS = {
    "base": "save_pretrained folder to tune",
    "data": "SFT Parquet (instruction, output)",
    "output": "trained model folder",
}


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


def train_sft(base: str, data: str, output: str, *, max_len: int, **options: Any) -> dict[str, Any]:
    """Instruction-tune ``base`` on the SFT table ``data``; save to ``output``.

    Args:
        base: save_pretrained folder (usually the CPT model).
        data: Parquet with ``instruction`` and ``output`` columns (R/data/sft.parquet).
        output: the trained folder (model, tokenizer with chat template, metrics, plot).
        max_len: longest tokenised example (prompt + answer).
        **options: the options both stages share, :class:`~domainllm.train.common.TrainOptions`
            (``checkpoint_dir``, ``max_steps``, ``batch_size``, ``learning_rate``,
            ``save_steps`` and ``seed`` are required).

    Returns:
        The metrics written to train_metrics.json.
    """
    opts = common.TrainOptions(**options)
    opts.start()
    rows = read_sft_data(data)
    args = opts.training_arguments(
        count_tokens="non_padding",
        drop_last=False,
        # Batches of similar lengths waste less compute on padding (random mega-batches).
        group_by_length=True,
    )

    def build(model, tokenizer):
        examples = tokenize_examples(tokenizer, rows, max_len)
        fields = {
            "examples": len(examples),
            "truncated_examples": int(sum(e["truncated"] for e in examples)),
            "answer_tokens": int(sum(len(e["input_ids"]) - e["prompt_len"] for e in examples)),
        }
        return ExampleList(examples), AnswerOnlyCollator(tokenizer.pad_token_id), fields

    identity = {"data": common.folder_fingerprint(data), "max_len": max_len}
    extra = {"data": str(data), "max_len": max_len}
    return common.run_stage("sft", base, output, opts, args, identity, build, extra)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (see the module docstring)."""
    return common.cli_main(train_sft, argv, CLI_PATHS, length=("max_len", 256))


if __name__ == "__main__":
    sys.exit(main())
