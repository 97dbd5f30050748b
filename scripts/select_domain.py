"""Snakemake adapter: keep the cleaned documents most similar to the domain seeds."""

from domainllm.corpus.select import select_domain
from domainllm.logs import log_to

with log_to(snakemake.log[0]):  # noqa: F821
    select_domain(
        snakemake.input.clean,  # noqa: F821
        snakemake.input.seeds,  # noqa: F821
        snakemake.output.selected,  # noqa: F821
        snakemake.output.report,  # noqa: F821
        backend=snakemake.params.backend,  # noqa: F821
        model=snakemake.params.model,  # noqa: F821
        svd_dim=snakemake.params.svd_dim,  # noqa: F821
        score=snakemake.params.score,  # noqa: F821
        topk=snakemake.params.topk,  # noqa: F821
        method=snakemake.params.method,  # noqa: F821
        value=snakemake.params.value,  # noqa: F821
        seed=snakemake.params.seed,  # noqa: F821
    )
