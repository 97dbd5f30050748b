"""The ``vllm`` backend: offline batched generation with ``vllm.LLM`` on GPUs.

vLLM reads compressed-tensors folders (the GPTQ output) natively. The chat
template is applied here with the model's own tokenizer, as the transformers
backend does, so both backends see identical prompt text.
"""

from __future__ import annotations

import logging

from domainllm.errors import PipelineError
from domainllm.infer.base import (
    OVERFLOW,
    Backend,
    Generation,
    SamplingParams,
    check_logit_bias,
    fit_prompt,
    register_backend,
)

log = logging.getLogger(__name__)


@register_backend("vllm")
class VLLMBackend(Backend):
    """Generate with ``vllm.LLM``.

    Args:
        model: the model folder.
        chat: wrap each prompt as a user turn with the tokenizer's chat template.
        tensor_parallel_size: GPUs one model is split over.
        gpu_memory_utilization: share of GPU memory vLLM may take.
        max_model_len: context length (None: the model's).
        dtype: "auto", "bfloat16", ...
        seed: vLLM's engine seed.
        trust_remote_code: allow custom model code from the folder.
        overflow: a prompt longer than the context: "truncate" (keep its end) or "error".
    """

    def __init__(
        self,
        model: str,
        *,
        chat: bool = True,
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.85,
        max_model_len: int | None = None,
        dtype: str = "auto",
        seed: int = 1234,
        trust_remote_code: bool = False,
        overflow: str = "truncate",
        **_: object,
    ):
        if overflow not in OVERFLOW:
            raise PipelineError(f"overflow must be one of {OVERFLOW}, got {overflow!r}")
        try:
            import vllm
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise PipelineError(
                "config key 'generate.backend' is 'vllm' but vllm is not installed "
                "(install the 'serve' extra in a GPU environment)"
            ) from e
        from domainllm.models.loading import check_model_folder

        check_model_folder(model)
        self.path = str(model)
        self.chat = chat
        self.overflow = overflow
        self.llm = vllm.LLM(
            model=self.path,
            tensor_parallel_size=int(tensor_parallel_size),
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            dtype=dtype,
            seed=seed,
            trust_remote_code=trust_remote_code,
        )
        self.tokenizer = self.llm.get_tokenizer()
        self.context = self.llm.llm_engine.model_config.max_model_len

    def _generate(self, prompts: list[str], params: SamplingParams) -> list[Generation]:
        import vllm

        check_logit_bias(params, len(self.tokenizer), self.path)
        sampling = vllm.SamplingParams(
            max_tokens=params.max_new_tokens,
            temperature=params.temperature,
            top_p=params.top_p if params.temperature > 0 else 1.0,
            seed=params.seed,
            stop=list(params.stop) or None,
            logit_bias=params.logit_bias or None,
            logprobs=0 if params.logprobs else None,
        )
        fitted = [
            fit_prompt(
                self.tokenize(p),
                context=self.context,
                max_new_tokens=params.max_new_tokens,
                overflow=self.overflow,
                index=i,
                where=self.path,
            )
            for i, p in enumerate(prompts)
        ]
        try:
            outputs = self.llm.generate(
                [{"prompt_token_ids": ids} for ids, _ in fitted], sampling, use_tqdm=True
            )
        except ValueError as e:  # vLLM's own validation of a request
            raise PipelineError(f"vllm refused the batch for {self.path}: {e}") from e
        results = []
        for out, (_, truncated) in zip(outputs, fitted, strict=True):
            comp = out.outputs[0]
            lps = None
            if params.logprobs and comp.logprobs is not None:
                lps = [
                    float(step[t].logprob)
                    for t, step in zip(comp.token_ids, comp.logprobs, strict=False)
                ]
            results.append(
                Generation(
                    text=comp.text,
                    prompt_tokens=len(out.prompt_token_ids),
                    output_tokens=len(comp.token_ids),
                    finish_reason="stop" if comp.finish_reason == "stop" else "length",
                    logprobs=lps,
                    truncated=truncated,
                )
            )
        return results

    def close(self) -> None:
        import gc

        del self.llm
        gc.collect()
