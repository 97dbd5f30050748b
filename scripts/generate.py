"""Snakemake adapter: one model version answers the evaluation prompts."""

from domainllm.infer import generate
from domainllm.logs import log_to

p = snakemake.params  # noqa: F821
with log_to(snakemake.log[0]):  # noqa: F821
    generate(
        snakemake.input.model,  # noqa: F821
        snakemake.input.prompts,  # noqa: F821
        snakemake.output[0],  # noqa: F821
        backend=p.backend,
        max_new_tokens=p.max_new_tokens,
        temperature=p.temperature,
        batch_size=p.batch_size,
        seed=p.seed,
        gpus=snakemake.resources.get("gpu", 1),  # noqa: F821
        trust_remote_code=p.trust_remote_code,
    )
