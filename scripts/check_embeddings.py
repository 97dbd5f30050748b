"""Snakemake adapter: agreement of each embedding backend with human similarity (JSTS)."""

from domainllm.corpus.embedding_check import check_embeddings
from domainllm.logs import log_to

with log_to(snakemake.log[0]):  # noqa: F821
    check_embeddings(
        snakemake.input.jsts,  # noqa: F821
        snakemake.output[0],  # noqa: F821
        backends=snakemake.params.backends,  # noqa: F821
        max_pairs=snakemake.params.max_pairs,  # noqa: F821
        model=snakemake.params.model,  # noqa: F821
        svd_dim=snakemake.params.svd_dim,  # noqa: F821
        seed=snakemake.params.seed,  # noqa: F821
    )
