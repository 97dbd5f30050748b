"""The inference interface every backend implements, and the backend registry.

A backend takes a batch of prompts and one :class:`SamplingParams` and returns one
:class:`Generation` per prompt, in order: the text, the prompt and output token
counts, why it stopped, whether the prompt was cut to fit, and the
log-probability of each generated token when asked for.

Backends register under a name with :func:`register_backend`; :func:`get_backend`
imports the module of a built-in backend only when it is asked for, so that
choosing ``transformers`` never imports vLLM or an HTTP client, and vice versa.
"""

from __future__ import annotations

import importlib
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from domainllm.errors import PipelineError

log = logging.getLogger(__name__)

_REGISTRY: dict[str, type[Backend]] = {}

# Built-in backends: name -> module that registers it on import.
_BUILTIN = {
    "transformers": "domainllm.infer.transformers_backend",
    "vllm": "domainllm.infer.vllm_backend",
    "openai": "domainllm.infer.openai_backend",
}

OVERFLOW = ("truncate", "error")
MAX_STOP = 4


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


@dataclass(frozen=True)
class SamplingParams:
    """How to decode.

    Attributes:
        max_new_tokens: generated tokens per prompt at most (the eos token included).
        temperature: 0 is greedy decoding; above 0 samples.
        top_p: nucleus sampling mass (only when sampling).
        seed: seeds sampling (each backend's own generator: the same seed gives the
            same samples on one backend, not across backends).
        logprobs: also return the log-probability of each generated token.
        stop: up to 4 strings that end a generation; the text stops before the first one
            (finish_reason "stop"); the tokens up to the one completing it count.
        logit_bias: token id -> value added to its logit at every step (OpenAI's
            ``logit_bias``), e.g. ``{eos_id: 100}`` ends every answer at once.
    """

    max_new_tokens: int = 48
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 1234
    logprobs: bool = False
    stop: tuple[str, ...] = ()
    logit_bias: dict[int, float] | None = None

    def __post_init__(self):
        if not _is_int(self.max_new_tokens) or self.max_new_tokens < 1:
            raise PipelineError(
                f"max_new_tokens must be an integer >= 1, got {self.max_new_tokens!r}"
            )
        if not isinstance(self.temperature, int | float) or not self.temperature >= 0:
            raise PipelineError(f"temperature must be a number >= 0, got {self.temperature!r}")
        if not isinstance(self.top_p, int | float) or not 0 < self.top_p <= 1:
            raise PipelineError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not _is_int(self.seed):
            raise PipelineError(f"seed must be an integer, got {self.seed!r}")
        if not isinstance(self.logprobs, bool):
            raise PipelineError(f"logprobs must be true or false, got {self.logprobs!r}")
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        if any(not isinstance(s, str) or not s for s in stop):
            raise PipelineError(f"stop must be non-empty strings, got {self.stop!r}")
        if len(stop) > MAX_STOP:
            raise PipelineError(
                f"stop: at most {MAX_STOP} strings (the OpenAI API's limit), got {len(stop)}"
            )
        object.__setattr__(self, "stop", stop)
        if self.logit_bias is not None:
            bias = dict(self.logit_bias)
            for k, v in bias.items():
                if not _is_int(k) or k < 0:
                    raise PipelineError(f"logit_bias: token ids must be integers >= 0, got {k!r}")
                if not isinstance(v, int | float) or not math.isfinite(v) or abs(v) > 100:
                    raise PipelineError(
                        f"logit_bias: values must be numbers in [-100, 100], got {v!r} for {k}"
                    )
            object.__setattr__(self, "logit_bias", {int(k): float(v) for k, v in bias.items()})

    def as_dict(self) -> dict:
        """The settings as plain values (recorded next to the generations)."""
        return {
            "max_new_tokens": self.max_new_tokens,
            "temperature": float(self.temperature),
            "top_p": float(self.top_p),
            "seed": self.seed,
            "logprobs": self.logprobs,
            "stop": list(self.stop),
            "logit_bias": dict(self.logit_bias or {}),
        }


@dataclass
class Generation:
    """One completion.

    Attributes:
        text: the generated text (special tokens, the prompt and any stop string removed).
        prompt_tokens: tokens of the prompt as the model saw it (chat template applied,
            after any truncation).
        output_tokens: generated tokens, the final eos included when generation stopped on it.
        finish_reason: "stop" (eos or a stop string) or "length" (max_new_tokens reached).
        logprobs: log-probability of each generated token (``output_tokens`` of them),
            when asked for.
        truncated: the prompt was cut from the left to fit the context.
    """

    text: str
    prompt_tokens: int
    output_tokens: int
    finish_reason: str = "length"
    logprobs: list[float] | None = field(default=None)
    truncated: bool = False


def check_prompts(prompts) -> list[str]:
    """The prompts as a list of strings, or a PipelineError naming the first bad one."""
    if isinstance(prompts, str | bytes) or not isinstance(prompts, Sequence):
        raise PipelineError(
            f"prompts must be a list of strings, got {type(prompts).__name__}"
            + (" (wrap a single prompt in a list)" if isinstance(prompts, str) else "")
        )
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise PipelineError(f"prompt {i} is {type(p).__name__}, not a string")
    return list(prompts)


def fit_prompt(
    ids: list[int],
    *,
    context: int | None,
    max_new_tokens: int,
    overflow: str = "truncate",
    index: int = 0,
    where: str = "the model",
) -> tuple[list[int], bool]:
    """Make a tokenised prompt leave room for ``max_new_tokens`` in ``context`` positions.

    A prompt that does not fit is cut from the left (its end, with the assistant
    header of the chat template, is what the answer follows) when ``overflow`` is
    "truncate", and refused when it is "error".

    Returns:
        (ids, truncated).

    Raises:
        PipelineError: ``max_new_tokens`` alone fills the context, or the prompt is
            too long and ``overflow`` is "error".
    """
    if not context:
        return ids, False
    room = context - max_new_tokens
    if room < 1:
        raise PipelineError(
            f"max_new_tokens={max_new_tokens} leaves no room for a prompt in the "
            f"{context}-token context of {where}"
        )
    if len(ids) <= room:
        return ids, False
    if overflow == "error":
        raise PipelineError(
            f"prompt {index} has {len(ids)} tokens; {where} fits {room} with "
            f"max_new_tokens={max_new_tokens} (config key 'generate.overflow' is 'error'; "
            "'truncate' keeps its last tokens)"
        )
    log.warning("prompt %d of %d tokens cut to its last %d", index, len(ids), room)
    return ids[-room:], True


def check_logit_bias(params: SamplingParams, vocab_size: int, where: str) -> None:
    """Refuse logit_bias token ids outside a ``vocab_size``-token vocabulary."""
    bad = sorted(t for t in params.logit_bias or {} if t >= vocab_size)
    if bad:
        raise PipelineError(
            f"logit_bias: token id(s) {bad[:5]} outside the {vocab_size}-token vocabulary "
            f"of {where}"
        )


def find_stop(text: str, stops: Sequence[str]) -> int | None:
    """Index of the earliest occurrence of any of ``stops`` in ``text`` (None: none)."""
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(hits) if hits else None


def cut_at_stop(
    decode: Callable[[list[int]], str], ids: list[int], stops: Sequence[str]
) -> tuple[int, str] | None:
    """Where a stop string ends generated ``ids``, as an OpenAI-compatible server does it.

    Returns:
        ``(n, text)``: the first ``n`` tokens are the first whose text holds a stop
        string (they all count as output), and ``text`` is that text cut before
        it; None when no stop string occurs.
    """
    if not stops or find_stop(decode(ids), stops) is None:
        return None
    for n in range(1, len(ids) + 1):
        text = decode(ids[:n])
        at = find_stop(text, stops)
        if at is not None:
            return n, text[:at]
    return None  # pragma: no cover - the full text held a stop string


class Backend:
    """A model that turns prompts into generations.

    Subclasses implement :meth:`_generate`; :meth:`generate` checks the batch and
    answers an empty one without touching the model.
    """

    name: str = "base"
    # Backends that see token ids locally set these: the model's tokenizer, and
    # whether prompts go through its chat template.
    tokenizer = None
    chat: bool = False

    def format_prompt(self, prompt: str) -> str:
        """The text the model sees for ``prompt`` (chat template applied when ``chat``)."""
        if not self.chat:
            return prompt
        from domainllm.train.chat import format_prompt

        return format_prompt(self.tokenizer, prompt)

    def tokenize(self, prompt: str) -> list[int]:
        """Token ids of one prompt as the model sees it, before any truncation."""
        # The chat template writes bos itself; a raw prompt gets the tokenizer's specials.
        return self.tokenizer(self.format_prompt(prompt), add_special_tokens=not self.chat)[
            "input_ids"
        ]

    def generate(self, prompts: list[str], params: SamplingParams) -> list[Generation]:
        """Generate one completion per prompt, in the order of ``prompts``.

        Raises:
            PipelineError: prompts not a list of strings, or params not SamplingParams.
        """
        prompts = check_prompts(prompts)
        if not isinstance(params, SamplingParams):
            raise PipelineError(f"params must be SamplingParams, got {type(params).__name__}")
        if not prompts:
            return []
        return self._generate(prompts, params)

    def _generate(self, prompts: list[str], params: SamplingParams) -> list[Generation]:
        raise NotImplementedError

    def close(self) -> None:
        """Release the model (GPU memory, connections); the backend is unusable afterwards."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def register_backend(name: str):
    """Class decorator registering a :class:`Backend` subclass under ``name``."""

    def deco(cls):
        if not issubclass(cls, Backend):
            raise TypeError(f"{cls.__name__} is not a Backend")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def available_backends() -> list[str]:
    """Names that :func:`get_backend` accepts."""
    return sorted(set(_REGISTRY) | set(_BUILTIN))


def get_backend(name: str, **kwargs) -> Backend:
    """Instantiate the backend registered as ``name`` with ``kwargs`` (e.g. ``model=...``).

    Raises:
        PipelineError: unknown name, naming the config key and the choices.
    """
    if name not in _REGISTRY and name in _BUILTIN:
        importlib.import_module(_BUILTIN[name])
    if name not in _REGISTRY:
        raise PipelineError(
            f"config key 'generate.backend': unknown backend '{name}' "
            f"(available: {', '.join(available_backends())})"
        )
    return _REGISTRY[name](**kwargs)
