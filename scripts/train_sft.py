"""Snakemake adapter: instruction tuning of the CPT model on the filtered SFT data."""

from domainllm.logs import log_to
from domainllm.train.sft import train_sft

p = snakemake.params  # noqa: F821
with log_to(snakemake.log[0]):  # noqa: F821
    train_sft(
        snakemake.input.base,  # noqa: F821
        snakemake.input.data,  # noqa: F821
        snakemake.output[0],  # noqa: F821
        checkpoint_dir=p.checkpoint_dir,
        max_steps=p.max_steps,
        batch_size=p.batch_size,
        gradient_accumulation_steps=p.gradient_accumulation_steps,
        max_len=p.max_len,
        learning_rate=p.learning_rate,
        warmup_ratio=p.warmup_ratio,
        save_steps=p.save_steps,
        deepspeed=p.deepspeed,
        bf16=p.bf16,
        peak_flops=p.peak_flops,
        seed=p.seed,
        threads=snakemake.threads,  # noqa: F821
        trust_remote_code=p.trust_remote_code,
    )
