"""The inference interface every backend implements, and the backend registry.

Backends register under a name with :func:`register_backend`; :func:`get_backend`
imports the module of a built-in backend only when it is asked for, so that
choosing ``transformers`` never imports vLLM and vice versa.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

from domainllm.errors import PipelineError

_REGISTRY: dict[str, type[Backend]] = {}

# Built-in backends: name -> module that registers it on import.
_BUILTIN = {
    "transformers": "domainllm.infer.transformers_backend",
    "vllm": "domainllm.infer.vllm_backend",
}


@dataclass(frozen=True)
class SamplingParams:
    """How to decode.

    Attributes:
        max_new_tokens: generated tokens per prompt at most (the eos token included).
        temperature: 0 is greedy decoding; above 0 samples.
        top_p: nucleus sampling mass (only when sampling).
        seed: seeds sampling.
        logprobs: also return the log-probability of each generated token.
    """

    max_new_tokens: int = 48
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 1234
    logprobs: bool = False

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise PipelineError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise PipelineError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise PipelineError(f"top_p must be in (0, 1], got {self.top_p}")


@dataclass
class Generation:
    """One completion.

    Attributes:
        text: the generated text (special tokens and the prompt removed).
        prompt_tokens: tokens of the prompt as the model saw it (chat template applied).
        output_tokens: generated tokens, the final eos included when generation stopped on it.
        finish_reason: "stop" (eos) or "length" (max_new_tokens reached).
        logprobs: log-probability of each generated token, when asked for.
    """

    text: str
    prompt_tokens: int
    output_tokens: int
    finish_reason: str = "length"
    logprobs: list[float] | None = field(default=None)


class Backend:
    """A model that turns prompts into generations. Subclasses implement :meth:`generate`."""

    name: str = "base"

    def generate(self, prompts: list[str], params: SamplingParams) -> list[Generation]:
        """Generate one completion per prompt, in the order of ``prompts``."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the model (GPU memory); the backend is unusable afterwards."""


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
