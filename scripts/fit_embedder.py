"""Snakemake adapter: fit the selection embedder once; save its state and the seed embeddings."""

from domainllm.corpus.embed import fit_embedder
from domainllm.logs import log_to

with log_to(snakemake.log[0]):  # noqa: F821
    fit_embedder(
        snakemake.input.clean,  # noqa: F821
        snakemake.input.seeds,  # noqa: F821
        snakemake.output.state,  # noqa: F821
        snakemake.output.seeds,  # noqa: F821
        backend=snakemake.params.backend,  # noqa: F821
        model=snakemake.params.model,  # noqa: F821
        svd_dim=snakemake.params.svd_dim,  # noqa: F821
        fit_docs=snakemake.params.fit_docs,  # noqa: F821
        seed=snakemake.params.seed,  # noqa: F821
    )
