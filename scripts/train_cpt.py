"""Snakemake adapter: continued pre-training of the chosen base on its domain shards."""

from domainllm.logs import log_to
from domainllm.train.cpt import train_cpt

p = snakemake.params  # noqa: F821
with log_to(snakemake.log[0]):  # noqa: F821
    train_cpt(
        snakemake.input.base,  # noqa: F821
        snakemake.input.shards,  # noqa: F821
        snakemake.output[0],  # noqa: F821
        checkpoint_dir=p.checkpoint_dir,
        max_steps=p.max_steps,
        batch_size=p.batch_size,
        gradient_accumulation_steps=p.gradient_accumulation_steps,
        seq_len=p.seq_len,
        learning_rate=p.learning_rate,
        warmup_ratio=p.warmup_ratio,
        save_steps=p.save_steps,
        deepspeed=p.deepspeed,
        bf16=p.bf16,
        peak_flops=p.peak_flops,
        seed=p.seed,
        threads=snakemake.threads,  # noqa: F821
        trust_remote_code=p.trust_remote_code,
        allow_pickle=p.allow_pickle,
    )
