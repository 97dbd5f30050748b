"""Snakemake adapter: instruction tuning of the CPT model on the filtered SFT data."""

from domainllm.logs import log_to
from domainllm.train.sft import train_sft

with log_to(snakemake.log[0]):  # noqa: F821
    train_sft(
        snakemake.input.base,  # noqa: F821
        snakemake.input.data,  # noqa: F821
        snakemake.output[0],  # noqa: F821
        chat_template=snakemake.input.get("chat_template") or None,  # noqa: F821
        threads=snakemake.threads,  # noqa: F821
        **snakemake.params,  # noqa: F821 - max_len, batching, lora, ... and the TrainOptions, by name
    )
