"""The ``vllm`` backend: offline batched generation with ``vllm.LLM`` on GPUs.

vLLM reads compressed-tensors folders (the GPTQ output) natively. The chat
template is applied here with the model's own tokenizer, as the transformers
backend does, so both backends see identical prompt text.
"""

from __future__ import annotations

import logging

from domainllm.errors import PipelineError
from domainllm.infer.base import Backend, Generation, SamplingParams, register_backend

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
        **_: object,
    ):
        try:
            import vllm
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise PipelineError(
                "config key 'generate.backend' is 'vllm' but vllm is not installed "
                "(install the 'serve' extra in a GPU environment)"
            ) from e
        self.path = str(model)
        self.chat = chat
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

    def format_prompt(self, prompt: str) -> str:
        if not self.chat:
            return prompt
        from domainllm.train.chat import format_prompt

        return format_prompt(self.tokenizer, prompt)

    def generate(self, prompts: list[str], params: SamplingParams) -> list[Generation]:
        import vllm

        sampling = vllm.SamplingParams(
            max_tokens=params.max_new_tokens,
            temperature=params.temperature,
            top_p=params.top_p if params.temperature > 0 else 1.0,
            seed=params.seed,
            logprobs=0 if params.logprobs else None,
        )
        # The chat template already writes bos: tokenise without specials, as the HF backend does.
        token_prompts = [
            {
                "prompt_token_ids": self.tokenizer(
                    self.format_prompt(p), add_special_tokens=not self.chat
                )["input_ids"]
            }
            for p in prompts
        ]
        outputs = self.llm.generate(token_prompts, sampling, use_tqdm=True)
        results = []
        for out in outputs:
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
                )
            )
        return results

    def close(self) -> None:
        import gc

        del self.llm
        gc.collect()
