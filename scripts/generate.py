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
        backend_options=dict(p.backend_options),
        max_new_tokens=p.max_new_tokens,
        temperature=p.temperature,
        top_p=p.top_p,
        batch_size=p.batch_size,
        overflow=p.overflow,
        seed=p.seed,
        trust_remote_code=p.trust_remote_code,
    )
