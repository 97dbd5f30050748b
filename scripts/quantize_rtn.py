"""Snakemake adapter: round-to-nearest baseline of the SFT model (GPTQ's scheme, no calibration)."""

from domainllm.logs import log_to
from domainllm.quantize.gptq import quantize_rtn

p = snakemake.params  # noqa: F821
with log_to(snakemake.log[0]):  # noqa: F821
    quantize_rtn(
        snakemake.input.model,  # noqa: F821
        snakemake.output[0],  # noqa: F821
        scheme=p.scheme,
        group_size=p.group_size,
        ignore=list(p.ignore),
        seed=p.seed,
        trust_remote_code=p.trust_remote_code,
    )
