"""Snakemake adapter: normalise, filter and deduplicate the ingested corpus."""

from domainllm.corpus.clean import clean_corpus
from domainllm.logs import log_to

with log_to(snakemake.log[0]):  # noqa: F821
    clean_corpus(
        snakemake.input.docs,  # noqa: F821
        snakemake.output.clean,  # noqa: F821
        snakemake.output.stats,  # noqa: F821
        snakemake.output.dropped,  # noqa: F821
        seed=snakemake.params.seed,  # noqa: F821
        **snakemake.params.clean,  # noqa: F821
    )
