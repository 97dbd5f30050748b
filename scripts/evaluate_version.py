"""Snakemake adapter: every metric of one model version."""

from domainllm.evaluate.version import evaluate_version
from domainllm.logs import log_to

p = snakemake.params  # noqa: F821
with log_to(snakemake.log[0]):  # noqa: F821
    evaluate_version(
        snakemake.wildcards.version,  # noqa: F821
        snakemake.input.model,  # noqa: F821
        snakemake.input.generations,  # noqa: F821
        snakemake.input.domain,  # noqa: F821
        snakemake.input.jcqa,  # noqa: F821
        snakemake.input.evaluator,  # noqa: F821
        snakemake.output.record,  # noqa: F821
        items_output=snakemake.output.item_scores,  # noqa: F821
        jcqa_max_items=p.jcqa_max_items,
        ppl_seq_len=p.ppl_seq_len,
        trust_remote_code=p.trust_remote_code,
        prompts=snakemake.input.prompts,  # noqa: F821
        tokenize=p.tokenize,
    )
