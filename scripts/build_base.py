"""Snakemake adapter: build (or copy) one base-model candidate into results/base/<candidate>/."""

from domainllm.logs import log_to
from domainllm.models.build import build_base

with log_to(snakemake.log[0]):  # noqa: F821
    build_base(
        snakemake.output[0],  # noqa: F821
        corpus=snakemake.input.get("corpus"),  # noqa: F821
        spec=snakemake.params.spec,  # noqa: F821
        source=snakemake.params.source,  # noqa: F821
        trust_remote_code=snakemake.params.trust_remote_code,  # noqa: F821
        allow_pickle=snakemake.params.allow_pickle,  # noqa: F821
        seed=snakemake.params.seed,  # noqa: F821
        threads=snakemake.threads,  # noqa: F821
    )
