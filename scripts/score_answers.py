"""Snakemake adapter: one evaluator scores one model version's answers."""

from domainllm.evaluate.table import score_answers
from domainllm.logs import log_to

w = snakemake.wildcards  # noqa: F821
with log_to(snakemake.log[0]):  # noqa: F821
    score_answers(
        snakemake.input.evaluator,  # noqa: F821
        snakemake.input.generations,  # noqa: F821
        snakemake.output[0],  # noqa: F821
        name=w.evaluator,
        version=w.version,
    )
