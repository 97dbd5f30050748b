"""Continued pre-training of a causal LM on the domain token shards.

The shards are memory-mapped and cut into packed fixed-length windows (labels =
input_ids; documents are separated by eos inside a window). The transformers
Trainer runs a cosine schedule with warmup, checkpoints under
``checkpoint_dir`` and resumes from the newest complete checkpoint there, so a
killed job (or a rerun with more ``max_steps``) continues where it stopped.

Usage (one CPU process; the embedded default's scale):
    python -m domainllm.train.cpt --base results/base/tiny-ja \\
        --shards results/shards/tiny-ja --output /tmp/cpt \\
        --checkpoint-dir /tmp/cpt-checkpoints --max-steps 150 --batch-size 8 --seq-len 128 \\
        --threads 1

Several GPUs (the same entry point under a launcher; DeepSpeed ZeRO optional):
    deepspeed --num_gpus 8 -m domainllm.train.cpt ... --deepspeed config/deepspeed/zero2.json --bf16
    torchrun --nproc_per_node 8 -m domainllm.train.cpt ...
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from domainllm.errors import DataError
from domainllm.io import read_json
from domainllm.train import common

log = logging.getLogger(__name__)


class PackedWindows:
    """A torch-style Dataset of consecutive ``seq_len``-token windows of one token array.

    Reads the (memory-mapped) array lazily: only the windows a batch needs are
    copied into memory.
    """

    def __init__(self, tokens, seq_len: int):
        self.tokens = tokens
        self.seq_len = int(seq_len)
        self.n = len(tokens) // self.seq_len

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        import numpy as np
        import torch

        if not 0 <= i < self.n:
            raise IndexError(i)
        start = i * self.seq_len
        ids = torch.from_numpy(
            np.asarray(self.tokens[start : start + self.seq_len], dtype=np.int64)
        )
        return {"input_ids": ids, "labels": ids.clone()}


def _check_shards(shards: Path, manifest: dict, tokenizer, model) -> None:
    """Refuse shards made with another tokenizer."""
    where = shards / "manifest.json"
    eos = tokenizer.eos_token_id
    if manifest.get("eos_id") != eos:
        raise DataError(
            f"{where}: eos_id {manifest.get('eos_id')} differs from the model tokenizer's eos id "
            f"{eos}; the shards were made with another tokenizer"
        )
    vocab = int(model.config.vocab_size)  # config: ZeRO-3 leaves the weight partitioned
    if int(manifest.get("vocab_size", 0)) > vocab:
        raise DataError(
            f"{where}: vocab_size {manifest['vocab_size']} exceeds the model's {vocab} embeddings"
        )


def train_cpt(
    base: str,
    shards: str,
    output: str,
    *,
    checkpoint_dir: str,
    max_steps: int,
    batch_size: int,
    gradient_accumulation_steps: int = 1,
    seq_len: int,
    learning_rate: float,
    warmup_ratio: float = 0.05,
    save_steps: int,
    deepspeed: str | None = None,
    bf16: bool = False,
    seed: int,
    save_total_limit: int = 2,
    logging_steps: int = 5,
    peak_flops: float | None = None,
    threads: int | None = None,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
) -> dict[str, Any]:
    """Continue pre-training ``base`` on the token shards in ``shards``; save to ``output``.

    Args:
        base: save_pretrained folder of the model to train.
        shards: folder with manifest.json and shard_*.bin (the corpus stage's output).
        output: the trained folder (model, tokenizer, train_metrics.json, loss_curve.png).
        checkpoint_dir: Trainer checkpoints; the newest complete one is resumed.
        max_steps: optimiser steps in total (resumed steps count).
        batch_size: sequences per device per micro-batch.
        gradient_accumulation_steps: micro-batches per optimiser step.
        seq_len: tokens per packed window.
        learning_rate: peak learning rate of the cosine schedule.
        warmup_ratio: share of ``max_steps`` spent warming up linearly.
        save_steps: checkpoint interval.
        deepspeed: DeepSpeed JSON config (config/deepspeed/zero2.json), or None.
        bf16: mixed precision in bfloat16 (GPUs).
        seed: seeds the data order and every RNG.
        save_total_limit: checkpoints kept.
        logging_steps: loss-logging interval (the loss history's resolution).
        threads: torch CPU threads (the job's share of cores; None keeps torch's default).
        peak_flops: peak FLOP/s per device for the MFU estimate (None: known GPUs, else null).
        trust_remote_code: allow custom model code in ``base``.
        allow_pickle: allow pickled (.bin) weights in ``base``.

    Returns:
        The metrics written to train_metrics.json.

    Raises:
        DataError: shards missing, inconsistent with their manifest, made with another
            tokenizer, or shorter than one window.
    """
    from transformers import default_data_collator, set_seed

    from domainllm.corpus.shards import load_tokens

    common.set_threads(threads)
    set_seed(seed)
    shards_dir = Path(shards)
    manifest_path = shards_dir / "manifest.json"
    if not manifest_path.is_file():
        raise DataError(f"{manifest_path}: no shard manifest (is {shards_dir} a shard folder?)")
    manifest = read_json(manifest_path)
    tokens = load_tokens(shards_dir)
    if len(tokens) < seq_len:
        raise DataError(
            f"{manifest_path}: {len(tokens)} tokens are fewer than one window of seq_len={seq_len}"
        )

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
        count_tokens="all",
    )
    run = {
        "stage": "cpt",
        "base": common.folder_fingerprint(base),
        "shards": common.folder_fingerprint(manifest_path),
        "seq_len": seq_len,
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
        _check_shards(shards_dir, manifest, tokenizer, model)
        dataset = PackedWindows(tokens, seq_len)
        fields = {"corpus_tokens": int(len(tokens)), "windows": len(dataset)}
        return dataset, default_data_collator, fields

    return common.run_stage(
        base=base,
        output=output,
        checkpoint_dir=checkpoint_dir,
        args=args,
        run=run,
        build=build,
        extra={
            "stage": "cpt",
            "base": str(base),
            "shards": str(shards_dir),
            "seq_len": seq_len,
            "tokens_per_step": seq_len * batch_size * gradient_accumulation_steps * args.world_size,
        },
        peak_flops=peak_flops,
        trust_remote_code=trust_remote_code,
        allow_pickle=allow_pickle,
        title=f"CPT of {Path(base).name}",
    )


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (see the module docstring)."""
    from domainllm.logs import log_to

    parser = argparse.ArgumentParser(
        prog="python -m domainllm.train.cpt",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--base", required=True, help="save_pretrained folder to train")
    parser.add_argument("--shards", required=True, help="shard folder (with manifest.json)")
    parser.add_argument("--output", required=True, help="trained model folder")
    parser.add_argument("--seq-len", type=int, default=128)
    common.add_common_cli(parser)
    a = parser.parse_args(argv)
    with log_to(a.log if common.is_main_process() else None):
        train_cpt(
            a.base,
            a.shards,
            a.output,
            checkpoint_dir=a.checkpoint_dir,
            max_steps=a.max_steps,
            batch_size=a.batch_size,
            gradient_accumulation_steps=a.gradient_accumulation_steps,
            seq_len=a.seq_len,
            learning_rate=a.learning_rate,
            warmup_ratio=a.warmup_ratio,
            save_steps=a.save_steps,
            deepspeed=a.deepspeed,
            bf16=a.bf16,
            seed=a.seed,
            logging_steps=a.logging_steps,
            peak_flops=a.peak_flops,
            threads=a.threads,
            trust_remote_code=a.trust_remote_code,
            allow_pickle=a.allow_pickle,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
