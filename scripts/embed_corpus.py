"""Snakemake adapter: embed one part of the cleaned corpus with the fitted embedder."""

from domainllm.corpus.embed import embed_corpus
from domainllm.logs import log_to

with log_to(snakemake.log[0]):  # noqa: F821
    embed_corpus(
        snakemake.input.clean,  # noqa: F821
        snakemake.input.state,  # noqa: F821
        snakemake.output.embeddings,  # noqa: F821
        snakemake.output.ids,  # noqa: F821
        part=snakemake.wildcards.part,  # noqa: F821
    )
