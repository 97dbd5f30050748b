"""Snakemake adapter: stream every corpus.sources entry into results/corpus/docs.parquet."""

from domainllm.corpus.ingest import ingest_corpus
from domainllm.logs import log_to

with log_to(snakemake.log[0]):  # noqa: F821
    ingest_corpus(
        snakemake.params.sources,  # noqa: F821
        snakemake.output.docs,  # noqa: F821
        stats=snakemake.output.stats,  # noqa: F821
    )
