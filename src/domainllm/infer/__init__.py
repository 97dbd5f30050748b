"""Inference: one interface over several backends (transformers, vLLM), chosen by name.

from domainllm.infer import SamplingParams, get_backend
backend = get_backend("transformers", model="results/models/x/sft")
backend.generate(["..."], SamplingParams(max_new_tokens=48))
"""

from domainllm.infer.base import (
    Backend,
    Generation,
    SamplingParams,
    available_backends,
    get_backend,
    register_backend,
)
from domainllm.infer.generation import generate

__all__ = [
    "Backend",
    "Generation",
    "SamplingParams",
    "available_backends",
    "generate",
    "get_backend",
    "register_backend",
]
