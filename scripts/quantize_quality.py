"""Snakemake adapter: quality table of the quantised model (full vs GPTQ vs RTN)."""

from domainllm.logs import log_to
from domainllm.quantize.quality import quantize_quality

i, p = snakemake.input, snakemake.params  # noqa: F821
with log_to(snakemake.log[0]):  # noqa: F821
    quantize_quality(
        i.full,
        i.gptq,
        i.rtn,
        i.heldout,
        i.prompts,
        snakemake.output.json,  # noqa: F821
        snakemake.output.md,  # noqa: F821
        model_name=p.model_name,
        seq_len=p.seq_len,
        n_prompts=p.n_prompts,
        max_new_tokens=p.max_new_tokens,
        generate_batch_size=p.generate_batch_size,
        repeats=p.repeats,
        device=p.device,
        threads=snakemake.threads,  # noqa: F821
        trust_remote_code=p.trust_remote_code,
    )
