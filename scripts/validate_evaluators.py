"""Snakemake adapter: every evaluator against held-out human judgements."""

from domainllm.evaluate.validation import validate_evaluators
from domainllm.logs import log_to

p = snakemake.params  # noqa: F821
inp = snakemake.input  # noqa: F821
with log_to(snakemake.log[0]):  # noqa: F821
    validate_evaluators(
        list(inp.evaluators),
        inp.feedback,
        list(inp.generations),
        snakemake.output.md,  # noqa: F821
        snakemake.output.json,  # noqa: F821
        names=list(p.names),
        summary_json=snakemake.output.summary,  # noqa: F821
        graded=inp.graded or None,
        graded_max_pairs=p.graded_max_pairs,
        thresholds=dict(p.thresholds),
        judge_max_pairs=p.judge_max_pairs,
        n_boot=p.n_boot,
        seed=p.seed,
    )
