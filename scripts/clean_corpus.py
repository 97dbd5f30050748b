"""Snakemake adapter: normalise, filter and deduplicate the ingested corpus."""

from domainllm.corpus.clean import clean_corpus
from domainllm.logs import log_to

with log_to(snakemake.log[0]):  # noqa: F821
    clean_corpus(
        snakemake.input.docs,  # noqa: F821
        snakemake.output.clean,  # noqa: F821
        snakemake.output.stats,  # noqa: F821
        min_chars=snakemake.params.min_chars,  # noqa: F821
        max_chars=snakemake.params.max_chars,  # noqa: F821
        max_symbol_ratio=snakemake.params.max_symbol_ratio,  # noqa: F821
        max_duplicate_line_fraction=snakemake.params.max_duplicate_line_fraction,  # noqa: F821
        dedup=snakemake.params.dedup,  # noqa: F821
    )
