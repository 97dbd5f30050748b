"""Snakemake adapter: score one base-model candidate into results/selection/scores/."""

from domainllm.logs import log_to
from domainllm.models.score import score_base

with log_to(snakemake.log[0]):  # noqa: F821
    score_base(
        snakemake.input.model,  # noqa: F821
        snakemake.output[0],  # noqa: F821
        domain_texts=snakemake.input.domain,  # noqa: F821
        jcqa=snakemake.input.jcqa,  # noqa: F821
        jcqa_max_items=snakemake.params.jcqa_max_items,  # noqa: F821
        ppl_seq_len=snakemake.params.ppl_seq_len,  # noqa: F821
        trust_remote_code=snakemake.params.trust_remote_code,  # noqa: F821
        allow_pickle=snakemake.params.allow_pickle,  # noqa: F821
        threads=snakemake.threads,  # noqa: F821
    )
