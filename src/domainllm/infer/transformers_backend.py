"""The ``transformers`` backend: batched ``model.generate`` with left padding, CPU or GPU.

Prompts are sorted by length before batching (less padding) and results put back
in the input order. Padding is on the left and the attention mask marks it, so a
prompt's greedy output does not depend on the batch it lands in. Log-probabilities
are those of the model's raw distribution (before temperature, top-p or logit
bias), as vLLM and OpenAI-compatible servers report them.
"""

from __future__ import annotations

import logging

from transformers import StoppingCriteria

from domainllm.errors import PipelineError
from domainllm.infer.base import (
    OVERFLOW,
    Backend,
    Generation,
    SamplingParams,
    check_logit_bias,
    cut_at_stop,
    find_stop,
    fit_prompt,
    register_backend,
)

log = logging.getLogger(__name__)


@register_backend("transformers")
class TransformersBackend(Backend):
    """Generate with a transformers causal LM loaded from a save_pretrained folder.

    Args:
        model: the model folder (full precision or a compressed-tensors quantised one).
        chat: wrap each prompt as a user turn with the tokenizer's chat template.
        batch_size: prompts per ``generate`` call.
        device: "cuda", "cpu", ...; None picks CUDA when available.
        dtype: torch dtype name passed to the loader (None keeps the saved one).
        trust_remote_code: allow custom model code from the folder.
        allow_pickle: allow pickled .bin weights.
        overflow: a prompt longer than the context: "truncate" (keep its end) or "error".
    """

    def __init__(
        self,
        model: str,
        *,
        chat: bool = True,
        batch_size: int = 8,
        device: str | None = None,
        dtype: str | None = None,
        trust_remote_code: bool = False,
        allow_pickle: bool = False,
        overflow: str = "truncate",
        **_: object,
    ):
        from domainllm.models.loading import default_device, load_for_inference

        if overflow not in OVERFLOW:
            raise PipelineError(f"overflow must be one of {OVERFLOW}, got {overflow!r}")
        self.path = str(model)
        self.chat = chat
        self.overflow = overflow
        self.batch_size = max(1, int(batch_size))
        self.device = device or default_device()
        self.model, self.tokenizer = load_for_inference(
            self.path,
            trust_remote_code=trust_remote_code,
            allow_pickle=allow_pickle,
            dtype=dtype,
            device=self.device,
        )
        tok = self.tokenizer
        if tok.pad_token_id is None:
            # Padding positions are masked out, so any id works; eos is always there.
            tok.pad_token = tok.eos_token
        self.eos_token_ids = self._eos_ids()
        self.max_positions = getattr(self.model.config, "max_position_embeddings", None)

    def _eos_ids(self) -> list[int]:
        ids = []
        if self.tokenizer.eos_token_id is not None:
            ids.append(self.tokenizer.eos_token_id)
        gen_eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        for i in gen_eos if isinstance(gen_eos, list) else [gen_eos]:
            if i is not None and i not in ids:
                ids.append(int(i))
        return ids

    def encode(self, prompt: str, max_new_tokens: int, index: int = 0) -> tuple[list[int], bool]:
        """Token ids of one prompt, cut from the left (or refused) to leave room for the answer."""
        return fit_prompt(
            self.tokenize(prompt),
            context=self.max_positions,
            max_new_tokens=max_new_tokens,
            overflow=self.overflow,
            index=index,
            where=self.path,
        )

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def _generate(self, prompts: list[str], params: SamplingParams) -> list[Generation]:
        import torch
        from tqdm import tqdm
        from transformers import GenerationConfig, StoppingCriteriaList

        check_logit_bias(params, len(self.tokenizer), self.path)
        torch.manual_seed(params.seed)
        if torch.cuda.is_available():
            torch.cuda.manual_seed_all(params.seed)
        encoded = [self.encode(p, params.max_new_tokens, i) for i, p in enumerate(prompts)]
        # Longest first: an out-of-memory error shows on the first batch, not the last.
        order = sorted(range(len(prompts)), key=lambda i: (-len(encoded[i][0]), i))
        sampling = params.temperature > 0
        gen_config = GenerationConfig(
            max_new_tokens=params.max_new_tokens,
            do_sample=sampling,
            temperature=params.temperature if sampling else None,
            top_p=params.top_p if sampling else None,
            # 0, not None: a None is filled with transformers' default top_k=50, which
            # vLLM and OpenAI-compatible servers do not apply.
            top_k=0,
            eos_token_id=self.eos_token_ids,
            pad_token_id=self.tokenizer.pad_token_id,
            sequence_bias=[[[t], b] for t, b in params.logit_bias.items()]
            if params.logit_bias
            else None,
            return_dict_in_generate=True,
            output_logits=params.logprobs,
        )
        results: list[Generation | None] = [None] * len(prompts)
        pad = self.tokenizer.pad_token_id
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        for batch in tqdm(batches, desc="generate", unit="batch", disable=len(batches) < 2):
            width = max(len(encoded[i][0]) for i in batch)
            input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
            attention = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                ids = encoded[i][0]
                input_ids[row, width - len(ids) :] = torch.tensor(ids)
                attention[row, width - len(ids) :] = 1
            stopping = StoppingCriteriaList()
            if params.stop:
                stopping.append(_StopStrings(self.decode, params.stop, width))
            with torch.no_grad():
                out = self.model.generate(
                    input_ids=input_ids.to(self.device),
                    attention_mask=attention.to(self.device),
                    generation_config=gen_config,
                    stopping_criteria=stopping,
                )
            new = out.sequences[:, width:].cpu()
            token_logprobs = None
            if params.logprobs:
                # Raw logits of each step -> log-probability of the token chosen there.
                steps = torch.stack(out.logits, dim=1).float().log_softmax(-1).cpu()
                token_logprobs = steps.gather(-1, new[:, : steps.shape[1], None]).squeeze(-1)
            for row, i in enumerate(batch):
                ids, truncated = encoded[i]
                results[i] = self._finish(
                    new[row].tolist(), len(ids), token_logprobs, row, params.stop, truncated
                )
        return results  # type: ignore[return-value]

    def _finish(
        self,
        ids: list[int],
        prompt_tokens: int,
        token_logprobs,
        row: int,
        stop: tuple[str, ...] = (),
        truncated: bool = False,
    ) -> Generation:
        """Cut a generated row at its first eos (kept in the count) or stop string; decode it."""
        end, reason = len(ids), "length"
        for k, t in enumerate(ids):
            if t in self.eos_token_ids:
                end, reason = k + 1, "stop"
                break
        text_ids = ids[: end - 1] if reason == "stop" else ids[:end]
        text = self.decode(text_ids)
        hit = cut_at_stop(self.decode, text_ids, stop)
        if hit is not None:
            (end, text), reason = hit, "stop"
        lps = None
        if token_logprobs is not None:
            lps = [float(x) for x in token_logprobs[row, :end]]
        return Generation(
            text=text,
            prompt_tokens=prompt_tokens,
            output_tokens=end,
            finish_reason=reason,
            logprobs=lps,
            truncated=truncated,
        )

    def close(self) -> None:
        import gc

        import torch

        self.model = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


class _StopStrings(StoppingCriteria):
    """Per row: done once the generated text (after ``width`` prompt columns) holds a stop string.

    The same test :func:`~domainllm.infer.base.cut_at_stop` applies afterwards, so a
    row stops exactly where its text is cut (transformers' own ``stop_strings`` also
    match across the prompt boundary, which OpenAI-compatible servers do not).
    """

    def __init__(self, decode, stops: tuple[str, ...], width: int):
        self.decode, self.stops, self.width = decode, stops, width

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        done = [
            find_stop(self.decode(row[self.width :].tolist()), self.stops) is not None
            for row in input_ids
        ]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)
