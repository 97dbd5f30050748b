"""Snakemake adapter: GPTQ quantisation of the SFT model, calibrated on the domain shards."""

from domainllm.logs import log_to
from domainllm.quantize.gptq import quantize_gptq

p = snakemake.params  # noqa: F821
with log_to(snakemake.log[0]):  # noqa: F821
    quantize_gptq(
        snakemake.input.model,  # noqa: F821
        snakemake.input.shards,  # noqa: F821
        snakemake.output[0],  # noqa: F821
        scheme=p.scheme,
        group_size=p.group_size,
        actorder=p.actorder,
        dampening_frac=p.dampening_frac,
        ignore=list(p.ignore),
        calibration_samples=p.calibration_samples,
        calibration_seq_len=p.calibration_seq_len,
        seed=p.seed,
        trust_remote_code=p.trust_remote_code,
    )
