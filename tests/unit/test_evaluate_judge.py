"""Tests of domainllm.evaluate.judge: templates, yes/no tokens, local and server scores."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from domainllm.errors import DataError, PipelineError
from domainllm.evaluate.feedback import load_evaluator
from domainllm.evaluate.judge import (
    JudgeEvaluator,
    LocalJudgeLM,
    OpenAIJudgeLM,
    Verdict,
    load_template,
    normalise_word,
    pairwise_summary,
    prepare_judge,
    token_variants,
)
from tests.unit._tiny_lm import ROOT, build_model, elyza_items, sample_texts

JUDGE_DIR = ROOT / "config" / "judge"
TEMPLATES = {m: str(JUDGE_DIR / f"{m}_ja.yaml") for m in ("pointwise", "pairwise", "similarity")}
# A tokenizer that spells every yes/no word as one token (as real models' do).
YES_NO_TEXTS = ["Yes No yes no はい いいえ\nYes.\nNo.\nはい。\nいいえ。"] * 30


def build_yes_no_model(path: Path, *, hidden: int, seed: int, heads: int = 4) -> Path:
    """A tiny judge model whose tokenizer spells the yes/no words as single tokens."""
    import torch

    torch.set_num_threads(1)
    return build_model(
        path,
        texts=sample_texts(20) + YES_NO_TEXTS,
        vocab_size=700,
        hidden=hidden,
        heads=heads,
        intermediate=2 * hidden,
        seed=seed,
    )


@pytest.fixture(scope="module")
def yes_no_model(tmp_path_factory) -> Path:
    return build_yes_no_model(tmp_path_factory.mktemp("judge") / "m", hidden=32, seed=3)


@pytest.fixture(scope="module")
def split_word_model(tmp_path_factory) -> Path:
    """A tokenizer trained on domain text only: はい, Yes ... are split into several tokens."""
    return build_model(
        tmp_path_factory.mktemp("judge") / "s",
        texts=sample_texts(20),
        vocab_size=500,
        hidden=32,
        intermediate=64,
        seed=4,
    )


@pytest.fixture(scope="module")
def local(yes_no_model) -> LocalJudgeLM:
    lm = LocalJudgeLM(str(yes_no_model), top_logprobs=10**6, batch_size=3, device="cpu")
    return lm


def _prompts(n: int = 5) -> list[str]:
    t = load_template(TEMPLATES["pointwise"])
    return [t.render(question=x["input"], answer=x["output"][:80]) for x in elyza_items(n)]


# ---------------------------------------------------------------- templates


def test_every_shipped_template_loads_with_its_mode():
    files = sorted(JUDGE_DIR.glob("*.yaml"))
    assert {f.stem for f in files} >= {"pointwise_ja", "pointwise_en", "pairwise_ja", "pairwise_en"}
    for f in files:
        t = load_template(f)
        assert f.stem.startswith(t.mode) and t.name == f.stem
        # Yes and no words of both languages; none is both.
        yes = {normalise_word(w) for w in t.yes}
        no = {normalise_word(w) for w in t.no}
        assert {"yes", "はい"} <= yes and {"no", "いいえ"} <= no
    p = load_template(JUDGE_DIR / "pairwise_en.yaml")
    text = p.render(question="Q?", answer_a="first", answer_b="second")
    assert "Q?" in text and text.index("first") < text.index("second")


@pytest.mark.parametrize(
    "change, message",
    [
        ({"mode": "listwise"}, "key 'mode'"),
        ({"prompt": "Is {answer} good?"}, "key 'prompt'"),
        ({"yes_words": []}, "key 'yes_words'"),
        ({"yes_words": [True]}, "quote it"),
        ({"no_words": ["Yes"]}, "both yes and no"),
        ({"extra": 1}, "unknown key"),
    ],
)
def test_a_bad_template_names_file_and_key(tmp_path, change, message):
    import yaml

    spec = yaml.safe_load((JUDGE_DIR / "pointwise_en.yaml").read_text())
    spec.update(change)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(spec, allow_unicode=True))
    with pytest.raises(DataError, match=message) as e:
        load_template(path)
    assert str(path) in str(e.value)


def test_a_bare_yes_key_is_explained(tmp_path):
    path = tmp_path / "bare.yaml"
    path.write_text("name: x\nmode: pointwise\nprompt: '{question} {answer}'\nyes: [a]\nno: [b]\n")
    with pytest.raises(DataError, match="yes_words and no_words"):
        load_template(path)


# ---------------------------------------------------------------- yes/no tokens


def test_every_token_spelling_a_word_is_mapped(local):
    tok = local.tokenizer
    v = token_variants(tok, ("はい", "yes"), ("いいえ", "no"))
    for word, side in [
        ("Yes", "yes"),
        ("yes", "yes"),
        ("はい", "yes"),
        ("No", "no"),
        (" No", "no"),
    ]:
        ids = tok(word, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1 and ids[0] in v[side], (word, ids)
    # Every mapped token decodes to a word of its side, and the sides are disjoint.
    for side, words in (("yes", {"yes", "はい"}), ("no", {"no", "いいえ"})):
        assert v[side] and all(normalise_word(tok.decode([i])) in words for i in v[side])
    assert not set(v["yes"]) & set(v["no"])
    assert v["yes_sequences"] == [] and v["no_sequences"] == []


def test_words_no_token_spells_become_token_sequences(split_word_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(split_word_model)
    v = token_variants(tok, ("はい", "yes"), ("いいえ", "no"))
    assert tok("はい", add_special_tokens=False)["input_ids"] in v["yes_sequences"]
    assert tok("いいえ", add_special_tokens=False)["input_ids"] in v["no_sequences"]
    for seq in v["yes_sequences"]:
        assert len(seq) > 1 and normalise_word(tok.decode(seq)) in {"yes", "はい"}


# ---------------------------------------------------------------- local scores


def test_local_score_is_p_yes_over_p_yes_plus_no_from_the_logits(local):
    import torch

    template = load_template(TEMPLATES["pointwise"])
    prompts = _prompts(4)
    verdicts = local.verdicts(prompts, template)
    v = token_variants(local.tokenizer, template.yes, template.no)
    for prompt, verdict in zip(prompts, verdicts, strict=True):
        ids = local.encode(prompt, "", 1)
        with torch.no_grad():
            logits = local.model(input_ids=torch.tensor([ids])).logits[0, -1]
        p = logits.double().softmax(-1)
        p_yes, p_no = float(p[sorted(v["yes"])].sum()), float(p[sorted(v["no"])].sum())
        assert verdict.found
        assert verdict.p_yes == pytest.approx(p_yes / (p_yes + p_no), abs=1e-5)
        assert verdict.mass == pytest.approx(p_yes + p_no, rel=1e-4)
        assert verdict.top == local.tokenizer.decode([int(logits.argmax())])


def test_batching_and_padding_do_not_change_scores(yes_no_model, local):
    template = load_template(TEMPLATES["pointwise"])
    prompts = _prompts(5)  # different lengths: left padding in a batch of 3
    single = LocalJudgeLM(str(yes_no_model), top_logprobs=10**6, batch_size=1, device="cpu")
    a = [v.p_yes for v in local.verdicts(prompts, template)]
    b = [v.p_yes for v in single.verdicts(prompts, template)]
    assert a == pytest.approx(b, abs=1e-5)


def test_multi_token_words_are_scored_as_continuations(split_word_model):
    import torch

    lm = LocalJudgeLM(str(split_word_model), top_logprobs=10**6, batch_size=2, device="cpu")
    template = load_template(TEMPLATES["pointwise"])
    prompts = _prompts(3)
    verdicts = lm.verdicts(prompts, template)
    v = lm.variants(template.yes, template.no)
    single = {"yes": sorted(v["yes"]), "no": sorted(v["no"])}

    def word_logprob(ids, seq):
        with torch.no_grad():
            lp = lm.model(input_ids=torch.tensor([ids + seq[:-1]])).logits[0].log_softmax(-1)
        return sum(float(lp[len(ids) - 1 + k, t]) for k, t in enumerate(seq))

    for prompt, verdict in zip(prompts, verdicts, strict=True):
        ids = lm.encode(prompt, "", max(len(s) for s in v["yes_sequences"] + v["no_sequences"]))
        with torch.no_grad():
            nxt = lm.model(input_ids=torch.tensor([ids])).logits[0, -1].log_softmax(-1)
        p = {}
        for side in ("yes", "no"):
            p[side] = sum(math.exp(float(nxt[i])) for i in single[side]) + sum(
                math.exp(word_logprob(ids, s)) for s in v[f"{side}_sequences"]
            )
        assert verdict.p_yes == pytest.approx(p["yes"] / (p["yes"] + p["no"]), abs=1e-5)


def test_no_yes_no_token_among_the_top_logprobs_is_no_verdict_not_half(yes_no_model):
    lm = LocalJudgeLM(str(yes_no_model), top_logprobs=1, batch_size=4, device="cpu")
    template = load_template(TEMPLATES["pointwise"])
    verdicts = lm.verdicts(_prompts(4), template)
    v = lm.variants(template.yes, template.no)
    yes_no = {lm.tokenizer.decode([i]) for i in [*v["yes"], *v["no"]]}
    for verdict in verdicts:
        if verdict.top in yes_no:
            assert verdict.found and 0 <= verdict.p_yes <= 1
        else:  # the only top token is no answer: no score at all
            assert not verdict.found and math.isnan(verdict.p_yes)
    assert any(not x.found for x in verdicts)


# ---------------------------------------------------------------- pairwise


def test_pairwise_summary_counts_flips_and_position_means():
    p_ab = np.array([0.9, 0.8, 0.3, np.nan])
    p_ba = np.array([0.2, 0.7, np.nan, np.nan])
    s = pairwise_summary(p_ab, p_ba)
    # Pair 0 consistent, pair 1 says "A" in both orders (a flip), pair 2 one order, pair 3 none.
    assert s["flip_rate"] == pytest.approx(0.5)
    assert s["pairs_both_orders"] == 2 and s["no_verdict"] == 3 and s["prompts"] == 8
    assert s["preference"][0] == pytest.approx((0.9 + 0.8) / 2)
    assert s["preference"][1] == pytest.approx((0.8 + 0.3) / 2)
    assert s["preference"][2] == pytest.approx(0.3) and math.isnan(s["preference"][3])
    assert s["mean_p_when_first"] == pytest.approx((0.9 + 0.8 + 0.3) / 3)
    assert s["mean_p_when_second"] == pytest.approx((0.8 + 0.3) / 2)
    assert s["p_yes_mean"] == pytest.approx((0.9 + 0.8 + 0.3 + 0.2 + 0.7) / 5)


class _RecordingLM:
    """Says P(Yes) = 0.8 whenever the text 'good' is shown as answer A: a judge without bias."""

    def __init__(self):
        self.prompts = []

    def verdicts(self, prompts, template):
        self.prompts += prompts
        out = []
        for p in prompts:
            a = p.split("[回答A]")[-1].split("[回答B]")[0]
            out.append(Verdict(0.8 if "good" in a else 0.2, True))
        return out

    def close(self):
        pass


def _judge_spec(model: str = "unused") -> dict:
    spec = {
        "kind": "judge",
        "backend": "transformers",
        "model": model,
        "max_field_chars": 50,
        "templates": {m: load_template(p).to_dict() for m, p in TEMPLATES.items()},
    }
    return spec


def test_pairwise_asks_both_orders_and_finds_the_better_text():
    judge = JudgeEvaluator(_judge_spec())
    judge._lm = _RecordingLM()
    res = judge.pairwise(["質問1", "質問2"], ["good one", "bad one"], ["bad one", "good one"])
    assert len(judge._lm.prompts) == 4
    first, swapped = judge._lm.prompts[0], judge._lm.prompts[2]
    assert first.index("good one") < first.index("bad one")
    assert swapped.index("bad one") < swapped.index("good one")
    assert res["preference"] == pytest.approx([0.8, 0.2])
    assert res["flip_rate"] == 0.0


def test_long_fields_are_cut_and_the_question_keeps_its_end():
    judge = JudgeEvaluator(_judge_spec())
    judge._lm = _RecordingLM()
    judge.pointwise(["x" * 100 + "LAST QUESTION"], ["FIRST ANSWER" + "y" * 100])
    prompt = judge._lm.prompts[0]
    assert "LAST QUESTION" in prompt and "FIRST ANSWER" in prompt
    assert "x" * 60 not in prompt and "y" * 60 not in prompt


# ---------------------------------------------------------------- the evaluator folder


def test_prepare_judge_writes_a_folder_load_evaluator_reads(tmp_path, yes_no_model):
    folder = tmp_path / "judge"
    prepare_judge(str(folder), model=str(yes_no_model), templates=TEMPLATES, top_logprobs=5)
    assert {p.name for p in folder.iterdir()} == {"evaluator.json", "tokens.json", "model_card.md"}
    tokens = json.loads((folder / "tokens.json").read_text())
    assert "Yes" in tokens["pointwise"]["yes"].values()
    assert "いいえ" in tokens["pointwise"]["no"].values()
    judge = load_evaluator(folder)
    assert isinstance(judge, JudgeEvaluator) and judge.abstains
    texts = [f"Human: {x['input']}\n\nAssistant: {x['output'][:60]}" for x in elyza_items(3)]
    scores = judge.score(texts + [""])
    assert scores.shape == (4,)
    assert all(math.isnan(s) or 0 <= s <= 1 for s in scores)
    assert [math.isnan(s) for s in scores] == [not v.found for v in judge.last_verdicts]
    judge.close()


def test_prepare_judge_refuses_a_template_of_another_mode(tmp_path, yes_no_model):
    with pytest.raises(DataError, match="evaluate.judge.templates.pointwise"):
        prepare_judge(
            str(tmp_path / "j"),
            model=str(yes_no_model),
            templates={"pointwise": TEMPLATES["pairwise"]},
        )
    with pytest.raises(PipelineError, match="evaluate.judge.backend"):
        prepare_judge(
            str(tmp_path / "j"), model=str(yes_no_model), templates=TEMPLATES, backend="x"
        )
    assert not (tmp_path / "j").exists()


# ---------------------------------------------------------------- OpenAI-compatible server


def _server(lm: LocalJudgeLM, requests: list, top_override=None):
    """An httpx transport answering like vLLM's OpenAI server, from the local model's logits."""
    import httpx
    import torch

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/models"):
            return httpx.Response(200, json={"data": [{"id": "judge", "max_model_len": 512}]})
        body = json.loads(request.content)
        requests.append(body)
        if top_override is not None:
            top = top_override
        else:
            with torch.no_grad():
                logits = lm.model(input_ids=torch.tensor([body["prompt"]])).logits[0, -1]
            for i, b in (body.get("logit_bias") or {}).items():
                logits[int(i)] += b
            lp = logits.double().log_softmax(-1)
            values, ids = lp.topk(body["logprobs"])
            top = {
                lm.tokenizer.decode([int(i)]): float(v) for v, i in zip(values, ids, strict=True)
            }
        if request.url.path.endswith("/chat/completions"):
            alternatives = [{"token": t, "logprob": v} for t, v in top.items()]
            best = max(top, key=top.get)
            content = [{"token": best, "logprob": top[best], "top_logprobs": alternatives}]
            choice = {"index": 0, "message": {"content": "x"}, "logprobs": {"content": content}}
        else:
            choice = {"index": 0, "text": "x", "logprobs": {"top_logprobs": [top]}}
        return httpx.Response(200, json={"choices": [choice]})

    return httpx.MockTransport(handle)


def test_openai_scores_match_the_local_logits(yes_no_model, local):
    template = load_template(TEMPLATES["pointwise"])
    prompts = _prompts(3)
    requests: list = []
    api = OpenAIJudgeLM(
        str(yes_no_model),
        top_logprobs=20,
        base_url="http://judge.test/v1",
        served_model="judge",
        transport=_server(local, requests),
    )
    remote = api.verdicts(prompts, template)
    here = local.verdicts(prompts, template)
    assert [v.p_yes for v in remote] == pytest.approx([v.p_yes for v in here], abs=1e-6)
    assert all(v.found for v in remote) and all(math.isnan(v.mass) for v in remote)
    body = requests[0]
    v = token_variants(local.tokenizer, template.yes, template.no)
    assert body["max_tokens"] == 1 and body["logprobs"] == 20 and body["model"] == "judge"
    assert {int(i) for i in body["logit_bias"]} == set(v["yes"]) | set(v["no"])
    # The prompt is the local chat template's token ids, as the other backends send.
    assert body["prompt"] == local.encode(prompts[0], "", 1)
    api.close()


@pytest.mark.parametrize("endpoint", ["completions", "chat"])
def test_openai_reply_without_yes_or_no_is_counted_not_half(yes_no_model, local, endpoint):
    template = load_template(TEMPLATES["pointwise"])
    api = OpenAIJudgeLM(
        str(yes_no_model),
        base_url="http://judge.test/v1",
        served_model="judge",
        endpoint=endpoint,
        logit_bias=0,  # unbiased: a judge that says neither yes nor no has no verdict
        transport=_server(local, [], top_override={"the": -0.1, "、": -2.5}),
    )
    verdicts = api.verdicts(_prompts(2), template)
    assert [v.found for v in verdicts] == [False, False]
    assert all(math.isnan(v.p_yes) for v in verdicts) and verdicts[0].top == "the"
    # Server tokens are matched by string: " Yes", "YES" and "Ġno" count.
    top = {" Yes": math.log(0.3), "YES": math.log(0.1), "Ġno": math.log(0.2), "x": -0.1}
    api2 = OpenAIJudgeLM(
        str(yes_no_model),
        base_url="http://judge.test/v1",
        served_model="judge",
        endpoint=endpoint,
        transport=_server(local, [], top_override=top),
    )
    (v,) = api2.verdicts(_prompts(1), template)
    assert v.found and v.p_yes == pytest.approx(0.4 / 0.6)


def test_a_server_reporting_logprobs_before_the_bias_is_refused(yes_no_model, local):
    """vLLM's default --logprobs-mode raw_logprobs: the bias picks the token, not the list.

    (The completions endpoint: the chat endpoint has no local token ids, hence no bias.)
    """
    template = load_template(TEMPLATES["pointwise"])
    api = OpenAIJudgeLM(
        str(yes_no_model),
        base_url="http://judge.test/v1",
        served_model="judge",
        endpoint="completions",
        transport=_server(local, [], top_override={"the": -0.1, "No": -6.0}),
    )
    with pytest.raises(PipelineError, match="processed_logprobs.*logit_bias: 0"):
        api.verdicts(_prompts(1), template)


def test_a_judge_folder_with_the_openai_backend_asks_the_server(yes_no_model, local):
    requests: list = []
    spec = {
        **_judge_spec(str(yes_no_model)),
        "backend": "openai",
        "top_logprobs": 20,
        "openai": {
            "base_url": "http://judge.test/v1",
            "model": "judge",
            "endpoint": "completions",
            "logit_bias": 100,
            "transport": _server(local, requests),
        },
    }
    judge = JudgeEvaluator(spec)
    texts = [f"Human: {x['input']}\n\nAssistant: {x['output'][:40]}" for x in elyza_items(2)]
    remote = judge.score(texts)
    assert len(requests) == 2 and requests[0]["model"] == "judge"
    here = JudgeEvaluator({**_judge_spec(str(yes_no_model)), "top_logprobs": 10**6})
    here._lm = local
    assert remote == pytest.approx(here.score(texts), abs=1e-6)
    judge.close()


def test_a_model_without_a_tokenizer_is_refused_naming_the_key(tmp_path):
    with pytest.raises(DataError, match="evaluate.judge.model"):
        prepare_judge(str(tmp_path / "j"), model=str(tmp_path / "missing"), templates=TEMPLATES)
    assert not (tmp_path / "j").exists()
