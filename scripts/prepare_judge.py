"""Snakemake adapter: the LLM judge's evaluator folder (templates, yes/no tokens, model card)."""

from domainllm.evaluate.judge import prepare_judge
from domainllm.logs import log_to

p = snakemake.params  # noqa: F821
with log_to(snakemake.log[0]):  # noqa: F821
    prepare_judge(
        snakemake.output[0],  # noqa: F821
        model=p.model,
        templates=dict(p.templates),
        backend=p.backend,
        chat=p.chat,
        top_logprobs=p.top_logprobs,
        batch_size=p.batch_size,
        max_field_chars=p.max_field_chars,
        tokenizer=p.tokenizer,
        trust_remote_code=p.trust_remote_code,
        openai=dict(p.openai),
    )
