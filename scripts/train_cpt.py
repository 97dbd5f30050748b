"""Snakemake adapter: continued pre-training of the chosen base on its domain shards."""

from domainllm.logs import log_to
from domainllm.train.cpt import train_cpt

with log_to(snakemake.log[0]):  # noqa: F821
    train_cpt(
        snakemake.input.base,  # noqa: F821
        snakemake.input.shards,  # noqa: F821
        snakemake.output[0],  # noqa: F821
        threads=snakemake.threads,  # noqa: F821
        **snakemake.params,  # noqa: F821 - seq_len and the TrainOptions, by name
    )
