"""Tests of domainllm.infer: the backend registry, the transformers backend and generate()."""

from __future__ import annotations

import math

import polars as pl
import pytest

from domainllm.errors import DataError, PipelineError
from domainllm.infer import (
    Backend,
    Generation,
    SamplingParams,
    available_backends,
    generate,
    get_backend,
    register_backend,
)
from domainllm.infer.generation import OUTPUT_COLUMNS
from tests.unit._tiny_lm import build_model, elyza_items, write_eval_prompts


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    import torch

    torch.set_num_threads(1)
    # Random weights: every prompt gets a different, non-degenerate continuation.
    return build_model(tmp_path_factory.mktemp("infer") / "m", hidden=64, intermediate=128, seed=3)


@pytest.fixture(scope="module")
def backend(model_dir):
    return get_backend("transformers", model=str(model_dir), batch_size=4, device="cpu")


@pytest.fixture(scope="module")
def prompts():
    # Real ELYZA prompts of very different lengths, so batches need padding.
    items = elyza_items(6)
    out = [x["input"] for x in items] + ["こんにちは"]
    assert len({len(p) for p in out}) > 3
    return out


GREEDY = SamplingParams(max_new_tokens=12, temperature=0.0)


def test_greedy_is_deterministic(backend, prompts):
    a = backend.generate(prompts, GREEDY)
    b = backend.generate(prompts, GREEDY)
    assert [g.text for g in a] == [g.text for g in b]
    assert len({g.text for g in a}) > 1  # not one constant answer


def test_batched_equals_one_by_one(backend, prompts):
    batched = backend.generate(prompts, GREEDY)
    single = [backend.generate([p], GREEDY)[0] for p in prompts]
    for b, s in zip(batched, single, strict=True):
        assert b.text == s.text
        assert b.prompt_tokens == s.prompt_tokens
        assert b.output_tokens == s.output_tokens


def test_matches_plain_transformers_generate(backend, prompts):
    """Same ids as a direct, unpadded model.generate call on the chat-formatted prompt."""
    import torch

    from domainllm.train.chat import format_prompt

    tok, model = backend.tokenizer, backend.model
    text = format_prompt(tok, prompts[0])
    ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(input_ids=ids, max_new_tokens=12, do_sample=False, eos_token_id=None)
    new = out[0, ids.shape[1] :].tolist()
    gen = backend.generate([prompts[0]], GREEDY)[0]
    assert gen.prompt_tokens == ids.shape[1]
    eos = tok.eos_token_id
    expected = new[: new.index(eos)] if eos in new else new
    assert gen.text == tok.decode(expected, skip_special_tokens=True)
    assert gen.output_tokens == (len(expected) + 1 if eos in new else len(new))


def test_chat_template_is_applied(model_dir, backend, prompts):
    raw = get_backend("transformers", model=str(model_dir), chat=False, device="cpu")
    with_chat = backend.generate(prompts[:1], GREEDY)[0]
    without = raw.generate(prompts[:1], GREEDY)[0]
    assert with_chat.prompt_tokens > without.prompt_tokens
    assert backend.format_prompt("質問").endswith("### アシスタント:\n")


def test_stops_at_eos(backend, prompts):
    free = backend.generate([prompts[1]], SamplingParams(max_new_tokens=10, logprobs=True))[0]
    assert free.finish_reason == "length" and free.output_tokens == 10
    # Make the k-th greedy token the eos token: generation must stop right there.
    tok = backend.tokenizer
    chat_ids = tok(backend.format_prompt(prompts[1]), add_special_tokens=False)["input_ids"]
    import torch

    with torch.no_grad():
        out = backend.model.generate(
            input_ids=torch.tensor([chat_ids]),
            max_new_tokens=10,
            do_sample=False,
            eos_token_id=None,
        )
    new = out[0, len(chat_ids) :].tolist()
    k = next(i for i in range(2, len(new)) if new[i] not in new[:i])
    saved = backend.eos_token_ids
    backend.eos_token_ids = [new[k]]
    try:
        stopped = backend.generate([prompts[1]], SamplingParams(max_new_tokens=10))[0]
    finally:
        backend.eos_token_ids = saved
    assert stopped.finish_reason == "stop"
    assert stopped.output_tokens == k + 1  # the eos token counts
    assert stopped.text == tok.decode(new[:k], skip_special_tokens=True)


def test_logprobs_one_per_token(backend, prompts):
    gens = backend.generate(prompts[:3], SamplingParams(max_new_tokens=6, logprobs=True))
    for g in gens:
        assert len(g.logprobs) == g.output_tokens
        assert all(math.isfinite(x) and x <= 0 for x in g.logprobs)


def test_sampling_is_seeded(backend, prompts):
    p = SamplingParams(max_new_tokens=12, temperature=1.0, top_p=0.95, seed=11)
    a = [g.text for g in backend.generate(prompts, p)]
    b = [g.text for g in backend.generate(prompts, p)]
    c = [
        g.text
        for g in backend.generate(
            prompts, SamplingParams(max_new_tokens=12, temperature=1.0, seed=12)
        )
    ]
    greedy = [g.text for g in backend.generate(prompts, GREEDY)]
    assert a == b
    assert a != c and a != greedy


def test_registry():
    assert {"transformers", "vllm", "openai"} <= set(available_backends())
    with pytest.raises(PipelineError, match="generate.backend.*nope"):
        get_backend("nope")

    @register_backend("echo-test")
    class Echo(Backend):
        def __init__(self, **kwargs):
            self.kwargs = kwargs

        def generate(self, prompts, params):
            return [
                Generation(text=p[::-1], prompt_tokens=len(p), output_tokens=len(p))
                for p in prompts
            ]

    b = get_backend("echo-test", model="x")
    assert b.kwargs == {"model": "x"} and b.name == "echo-test"
    assert b.generate(["abc"], SamplingParams())[0].text == "cba"


def test_sampling_params_validated():
    with pytest.raises(PipelineError):
        SamplingParams(max_new_tokens=0)
    with pytest.raises(PipelineError):
        SamplingParams(temperature=-1)


def test_generate_writes_contract_parquet(model_dir, tmp_path):
    prompts = tmp_path / "eval_prompts.parquet"
    items = write_eval_prompts(prompts, 5)
    out = tmp_path / "generations" / "sft.parquet"
    summary = generate(
        str(model_dir), str(prompts), str(out), max_new_tokens=8, batch_size=2, seed=1
    )
    df = pl.read_parquet(out)
    assert df.columns == list(OUTPUT_COLUMNS)
    assert OUTPUT_COLUMNS[:6] == (
        "id",
        "prompt",
        "reference",
        "output",
        "prompt_tokens",
        "output_tokens",
    )
    assert df["backend"].to_list() == ["transformers"] * 5
    assert df["max_new_tokens"].to_list() == [8] * 5 and df["seed"].to_list() == [1] * 5
    assert df["temperature"].to_list() == [0.0] * 5 and df["top_p"].to_list() == [1.0] * 5
    assert set(df["finish_reason"]) <= {"stop", "length"}
    assert not df["truncated"].any() and summary["truncated_prompts"] == 0
    assert df["id"].to_list() == [f"elyza/{i}" for i in range(5)]
    assert df["reference"].to_list() == [x["output"] for x in items]
    assert df["prompt_tokens"].min() > 0
    assert df["output_tokens"].max() <= 8 and df["output_tokens"].min() >= 1
    assert summary["prompts"] == 5
    # Same seed, same file content.
    again = tmp_path / "again.parquet"
    generate(str(model_dir), str(prompts), str(again), max_new_tokens=8, batch_size=3, seed=1)
    assert pl.read_parquet(again).equals(df)


def test_generate_rejects_bad_prompts(model_dir, tmp_path):
    bad = tmp_path / "bad.parquet"
    pl.DataFrame({"id": ["a"], "text": ["x"]}).write_parquet(bad)
    out = tmp_path / "out.parquet"
    with pytest.raises(DataError, match="missing column.*prompt"):
        generate(str(model_dir), str(bad), str(out))
    empty = tmp_path / "empty.parquet"
    pl.DataFrame({"id": ["a", "b"], "prompt": ["ok", " "], "reference": ["r", "r"]}).write_parquet(
        empty
    )
    with pytest.raises(DataError, match="row 1.*empty prompt"):
        generate(str(model_dir), str(empty), str(out))
    assert not out.exists()


@pytest.mark.gpu
def test_vllm_backend_greedy(model_dir):
    pytest.importorskip("vllm")
    backend = get_backend("vllm", model=str(model_dir), gpu_memory_utilization=0.3)
    gens = backend.generate(["売上高について"], SamplingParams(max_new_tokens=8, logprobs=True))
    assert 1 <= gens[0].output_tokens <= 8 and len(gens[0].logprobs) == gens[0].output_tokens


@pytest.mark.gpu
def test_transformers_backend_on_cuda(model_dir, prompts):
    backend = get_backend("transformers", model=str(model_dir), device="cuda", batch_size=4)
    gens = backend.generate(prompts, GREEDY)
    single = [backend.generate([p], GREEDY)[0] for p in prompts]
    assert [g.output_tokens for g in gens] == [s.output_tokens for s in single]
    assert all(1 <= g.output_tokens <= 12 for g in gens)
    backend.close()


def test_logprobs_are_the_models_raw_distribution(backend, prompts, monkeypatch):
    """Each reported log-probability is log_softmax of the model's logits at that step,
    before temperature or top-p (as vLLM and OpenAI-compatible servers report them)."""
    import torch

    sequences = []
    generate_ids = backend.model.generate

    def spy(*args, **kwargs):
        out = generate_ids(*args, **kwargs)
        sequences.append(out.sequences)
        return out

    monkeypatch.setattr(backend.model, "generate", spy)
    for params in (
        SamplingParams(max_new_tokens=6, logprobs=True),
        SamplingParams(max_new_tokens=6, logprobs=True, temperature=1.5, top_p=0.5, seed=3),
    ):
        gen = backend.generate(prompts[:1], params)[0]
        n = len(backend.tokenize(prompts[0]))
        seq = sequences[-1][0, : n + gen.output_tokens]
        with torch.no_grad():
            logits = backend.model(input_ids=seq[None, :-1]).logits[0].log_softmax(-1)
        expected = [float(logits[n - 1 + k, t]) for k, t in enumerate(seq[n:].tolist())]
        assert gen.logprobs == pytest.approx(expected, abs=1e-4)


def test_sampling_has_no_hidden_top_k(backend, prompts, monkeypatch):
    """temperature/top_p only: transformers' default top_k=50 must not cut the vocabulary
    (vLLM and OpenAI-compatible servers apply no top-k)."""
    import torch

    sequences = []
    generate_ids = backend.model.generate

    def spy(*args, **kwargs):
        out = generate_ids(*args, **kwargs)
        sequences.append(out.sequences)
        return out

    monkeypatch.setattr(backend.model, "generate", spy)
    # Hot sampling from a random model: nearly uniform over the vocabulary.
    backend.generate([prompts[0]] * 8, SamplingParams(max_new_tokens=1, temperature=5.0, seed=1))
    firsts = set(sequences[-1][:, -1].tolist())
    ids = torch.tensor([backend.tokenize(prompts[0])])
    with torch.no_grad():
        top50 = set(backend.model(input_ids=ids).logits[0, -1].topk(50).indices.tolist())
    assert firsts - top50


def test_stop_strings_batched_equals_one_by_one(backend, prompts):
    free = backend.generate(prompts, GREEDY)
    stops = tuple({c for g in free for c in g.text[2:5] if c.isalnum()})[:4]
    assert stops
    p = SamplingParams(max_new_tokens=12, stop=stops, logprobs=True)
    batched = backend.generate(prompts, p)
    single = [backend.generate([x], p)[0] for x in prompts]
    assert [(g.text, g.output_tokens) for g in batched] == [
        (g.text, g.output_tokens) for g in single
    ]
    hit = 0
    for f, g in zip(free, batched, strict=True):
        assert not any(s in g.text for s in stops)
        assert len(g.logprobs) == g.output_tokens <= f.output_tokens
        assert f.text.startswith(g.text)
        hit += g.finish_reason == "stop" and g.output_tokens < f.output_tokens
    assert hit >= 2


def test_long_prompts_truncated_or_refused(model_dir, backend):
    long = "\n".join(x["input"] for x in elyza_items(40))
    n = len(backend.tokenize(long))
    assert n > 512
    g = backend.generate([long, "短い"], SamplingParams(max_new_tokens=8))
    assert g[0].truncated and g[0].prompt_tokens == 512 - 8
    assert not g[1].truncated
    strict = get_backend("transformers", model=str(model_dir), device="cpu", overflow="error")
    with pytest.raises(
        PipelineError, match=f"prompt 1 has {n} tokens.*fits 504.*generate.overflow"
    ):
        strict.generate(["短い", long], SamplingParams(max_new_tokens=8))
    with pytest.raises(PipelineError, match="max_new_tokens=512 leaves no room.*512-token"):
        strict.generate(["短い"], SamplingParams(max_new_tokens=512))


def test_model_folder_without_weights(model_dir, tmp_path):
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(model_dir, bare)
    (bare / "model.safetensors").unlink()
    with pytest.raises(DataError, match="bare: no model weights"):
        get_backend("transformers", model=str(bare), device="cpu")
