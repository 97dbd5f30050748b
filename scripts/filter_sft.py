"""Snakemake adapter: score SFT candidates with the feedback evaluator and keep the good ones."""

from domainllm.logs import log_to
from domainllm.train.filter import filter_sft

with log_to(snakemake.log[0]):  # noqa: F821
    filter_sft(
        snakemake.input.candidates,  # noqa: F821
        snakemake.input.evaluator,  # noqa: F821
        snakemake.output.data,  # noqa: F821
        snakemake.output.stats,  # noqa: F821
        drop_quantile=snakemake.params.drop_quantile,  # noqa: F821
    )
