"""Snakemake adapter: score one base-model candidate into results/selection/scores/."""

from domainllm.logs import log_to
from domainllm.models.score import score_base

with log_to(snakemake.log[0]):  # noqa: F821
    score_base(
        snakemake.input.model,  # noqa: F821
        snakemake.output[0],  # noqa: F821
        domain_texts=snakemake.input.domain,  # noqa: F821
        corpus=snakemake.input.corpus,  # noqa: F821
        tasks=snakemake.params.tasks,  # noqa: F821
        max_items=snakemake.params.max_items,  # noqa: F821
        ppl_seq_len=snakemake.params.ppl_seq_len,  # noqa: F821
        ppl_stride=snakemake.params.ppl_stride,  # noqa: F821
        corpus_max_docs=snakemake.params.corpus_max_docs,  # noqa: F821
        seed=snakemake.params.seed,  # noqa: F821
        trust_remote_code=snakemake.params.trust_remote_code,  # noqa: F821
        allow_pickle=snakemake.params.allow_pickle,  # noqa: F821
        threads=snakemake.threads,  # noqa: F821
    )
