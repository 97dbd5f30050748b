"""Snakemake adapter: score the cached embeddings against the seeds, cut, and report."""

from domainllm.corpus.select import select_domain
from domainllm.logs import log_to

with log_to(snakemake.log[0]):  # noqa: F821
    select_domain(
        snakemake.input.clean,  # noqa: F821
        snakemake.input.seeds,  # noqa: F821
        list(snakemake.input.embeddings),  # noqa: F821
        list(snakemake.input.ids),  # noqa: F821
        snakemake.output.selected,  # noqa: F821
        snakemake.output.report,  # noqa: F821
        histogram=snakemake.output.histogram,  # noqa: F821
        markdown=snakemake.output.markdown,  # noqa: F821
        embedder=snakemake.input.state,  # noqa: F821
        score=snakemake.params.score,  # noqa: F821
        topk=snakemake.params.topk,  # noqa: F821
        method=snakemake.params.method,  # noqa: F821
        value=snakemake.params.value,  # noqa: F821
    )
