"""Snakemake adapter: ELYZA-tasks-100 + configured sources -> SFT candidates, eval prompts."""

from domainllm.data.instructions import prepare_instructions
from domainllm.logs import log_to

with log_to(snakemake.log[0]):  # noqa: F821
    prepare_instructions(
        snakemake.input.elyza,  # noqa: F821
        snakemake.output.candidates,  # noqa: F821
        snakemake.output.eval_prompts,  # noqa: F821
        sources=snakemake.params.sources,  # noqa: F821
        elyza_eval=snakemake.params.elyza_eval,  # noqa: F821
        jsquad=getattr(snakemake.input, "jsquad", None),  # noqa: F821
        jsquad_items=snakemake.params.jsquad_items,  # noqa: F821
        seed=snakemake.params.seed,  # noqa: F821
    )
