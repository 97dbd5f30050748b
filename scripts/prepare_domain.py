"""Snakemake adapter: split the domain reports into selection seeds and held-out text."""

from domainllm.data.domain import prepare_domain
from domainllm.logs import log_to

with log_to(snakemake.log[0]):  # noqa: F821
    prepare_domain(
        snakemake.input.path,  # noqa: F821
        snakemake.output.seed,  # noqa: F821
        snakemake.output.heldout,  # noqa: F821
        seed_docs=snakemake.params.seed_docs,  # noqa: F821
        heldout_docs=snakemake.params.heldout_docs,  # noqa: F821
        seed=snakemake.params.seed,  # noqa: F821
    )
