"""Snakemake adapter: drop bad-feedback, duplicate and low-scored SFT candidates."""

from domainllm.logs import log_to
from domainllm.train.filter import filter_sft

with log_to(snakemake.log[0]):  # noqa: F821
    filter_sft(
        snakemake.input.candidates,  # noqa: F821
        snakemake.input.evaluator,  # noqa: F821
        snakemake.output.data,  # noqa: F821
        snakemake.output.stats,  # noqa: F821
        dropped_samples=snakemake.output.dropped_samples,  # noqa: F821
        drop_quantile=snakemake.params.drop_quantile,  # noqa: F821
        min_score=snakemake.params.min_score,  # noqa: F821
        drop_feedback=list(snakemake.params.drop_feedback),  # noqa: F821
        samples_per_reason=snakemake.params.samples_per_reason,  # noqa: F821
    )
