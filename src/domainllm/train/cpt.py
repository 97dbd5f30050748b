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
    torchrun --standalone --nproc_per_node 8 -m domainllm.train.cpt ... \
        --deepspeed config/deepspeed/zero2.json --bf16
    deepspeed --num_gpus 8 --module domainllm.train.cpt ...

The workflow plans these with ``cpt.launcher``; several nodes, ZeRO-2 vs ZeRO-3, resuming
and the outputs: docs/training.md.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from domainllm.corpus.shards import UINT16_MAX_VOCAB
from domainllm.errors import DataError
from domainllm.io import read_json
from domainllm.train import common

log = logging.getLogger(__name__)

# The entry point's required paths, in train_cpt's argument order: {option: help}.
CLI_PATHS = {
    "base": "save_pretrained folder to train",
    "shards": "shard folder (with manifest.json)",
    "output": "trained model folder",
}


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
    if manifest.get("dtype") == "uint16" and len(tokenizer) > UINT16_MAX_VOCAB:
        raise DataError(
            f"{where}: the shards hold uint16 ids, but the model's tokenizer has "
            f"{len(tokenizer)} tokens; the shards were made with another tokenizer"
        )
    vocab = int(model.config.vocab_size)  # config: ZeRO-3 leaves the weight partitioned
    if int(manifest.get("vocab_size", 0)) > vocab:
        raise DataError(
            f"{where}: vocab_size {manifest['vocab_size']} exceeds the model's {vocab} embeddings"
        )


def train_cpt(
    base: str, shards: str, output: str, *, seq_len: int, **options: Any
) -> dict[str, Any]:
    """Continue pre-training ``base`` on the token shards in ``shards``; save to ``output``.

    Args:
        base: save_pretrained folder of the model to train.
        shards: folder with manifest.json and shard_*.bin (the corpus stage's output).
        output: the trained folder (model, tokenizer, train_metrics.json, loss_curve.png).
        seq_len: tokens per packed window.
        **options: the options both stages share, :class:`~domainllm.train.common.TrainOptions`
            (``checkpoint_dir``, ``max_steps``, ``batch_size``, ``learning_rate``,
            ``save_steps`` and ``seed`` are required).

    Returns:
        The metrics written to train_metrics.json.

    Raises:
        DataError: shards missing, inconsistent with their manifest, made with another
            tokenizer, or shorter than one window.
    """
    from transformers import default_data_collator

    from domainllm.corpus.shards import load_tokens

    opts = common.TrainOptions(**options)
    opts.start()
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

    args = opts.training_arguments(count_tokens="all")

    def build(model, tokenizer):
        _check_shards(shards_dir, manifest, tokenizer, model)
        dataset = PackedWindows(tokens, seq_len)
        fields = {"corpus_tokens": int(len(tokens)), "windows": len(dataset)}
        return dataset, default_data_collator, fields

    identity = {"shards": common.folder_fingerprint(manifest_path), "seq_len": seq_len}
    tokens_per_step = seq_len * opts.batch_size * opts.gradient_accumulation_steps * args.world_size
    extra = {"shards": str(shards_dir), "seq_len": seq_len, "tokens_per_step": tokens_per_step}
    return common.run_stage("cpt", base, output, opts, args, identity, build, extra)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (see the module docstring)."""
    return common.cli_main(train_cpt, argv, CLI_PATHS, length=("seq_len", 128))


if __name__ == "__main__":
    sys.exit(main())
