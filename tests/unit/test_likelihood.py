"""Tests of domainllm.evaluate.likelihood: multiple choice and bits per character."""

from __future__ import annotations

import json
import math
import random

import pytest

from domainllm.errors import DataError
from domainllm.evaluate import likelihood
from domainllm.evaluate.likelihood import (
    JCQA_PROMPT,
    continuation_logliks,
    domain_bits_per_char,
    encode_pair,
    load_jcqa,
    mcqa_accuracy,
)
from tests.unit import _tiny_lm
from tests.unit._tiny_lm import JCQA, sample_texts


@pytest.fixture(scope="module")
def tokenizer():
    from domainllm.models.build import train_tokenizer

    items = load_jcqa(JCQA, 200)
    texts = sample_texts(20) + [i["question"] + "".join(i["choices"]) for i in items]
    return train_tokenizer(texts, 800)


def tiny_llama(tokenizer, seed: int = 0, uniform: bool = False):
    import torch

    model = _tiny_lm.tiny_llama(tokenizer, seed=seed, tie_word_embeddings=False).eval()
    if uniform:
        # Zero output weights: every next-token distribution is uniform over the vocabulary.
        with torch.no_grad():
            model.lm_head.weight.zero_()
    return model


def test_load_jcqa_reads_the_real_file():
    items = load_jcqa(JCQA, 7)
    assert len(items) == 7
    assert items[0]["question"] == "電子機器で使用される最も主要な電子回路基板の事をなんと言う？"
    assert items[0]["choices"][items[0]["label"]] == "マザーボード"
    assert all(len(i["choices"]) == 5 for i in items)


def test_load_jcqa_names_the_bad_line(tmp_path):
    bad = tmp_path / "q.jsonl"
    good = {"question": "q", "choice0": "a", "choice1": "b", "label": 1}
    bad.write_text(json.dumps(good) + "\n" + json.dumps({**good, "label": 5}) + "\n")
    with pytest.raises(DataError, match=r"q.jsonl:2: label 5"):
        load_jcqa(bad)
    bad.write_text(json.dumps({"question": "q", "choice0": "a"}) + "\n")
    with pytest.raises(DataError, match=r"q.jsonl:1"):
        load_jcqa(bad)


def test_encode_pair_splits_like_the_harness(tokenizer):
    ctx, cont = encode_pair(tokenizer, "質問:水を出すときに捻るものは？\n答え:", "蛇口")
    whole = tokenizer("質問:水を出すときに捻るものは？\n答え:蛇口")["input_ids"]
    assert ctx + cont == whole and ctx[0] == tokenizer.bos_token_id and cont
    # A trailing space of the context moves to the continuation.
    ctx2, cont2 = encode_pair(tokenizer, "answer: ", "yes")
    assert ctx2 == tokenizer("answer:")["input_ids"]
    assert cont2 == tokenizer("answer: yes")["input_ids"][len(ctx2) :]


def test_logliks_match_a_direct_computation(tokenizer):
    import torch

    model = tiny_llama(tokenizer, seed=3)
    items = load_jcqa(JCQA, 4)
    pairs = [(JCQA_PROMPT.format(question=i["question"]), c) for i in items for c in i["choices"]]
    batched = continuation_logliks(model, tokenizer, pairs, batch_size=7)
    for (context, choice), got in zip(pairs, batched, strict=True):
        n_ctx = len(tokenizer(context)["input_ids"])
        ids = tokenizer(context + choice)["input_ids"]
        with torch.no_grad():
            logp = model(input_ids=torch.tensor([ids])).logits[0].log_softmax(-1)
        want = sum(float(logp[p - 1, ids[p]]) for p in range(n_ctx, len(ids)))
        assert got == pytest.approx(want, abs=1e-4)


def test_uniform_model_scores_choices_by_token_count(tokenizer):
    model = tiny_llama(tokenizer, uniform=True)
    log_v = math.log(len(tokenizer))
    context = JCQA_PROMPT.format(question="決算で最も重要な数字は？")
    choices = ["売上高", "営業利益の前年同期比", "株", "当連結会計年度の経常利益"]
    lls = continuation_logliks(model, tokenizer, [(context, c) for c in choices], batch_size=3)
    n_tokens = [len(encode_pair(tokenizer, context, c)[1]) for c in choices]
    assert lls == pytest.approx([-n * log_v for n in n_tokens], abs=1e-4)
    # Fewest tokens wins acc; most bytes per token wins acc_norm.
    best_acc = min(range(4), key=lambda i: (n_tokens[i], i))
    best_norm = max(range(4), key=lambda i: (len(choices[i].encode()) / n_tokens[i], -i))
    assert best_acc != best_norm
    items = [{"question": "決算で最も重要な数字は？", "choices": choices, "label": best_acc}]
    out = mcqa_accuracy(model, tokenizer, items)
    assert (out["acc"], out["acc_bytes"], out["n"]) == (1.0, 0.0, 1)
    items[0]["label"] = best_norm
    out = mcqa_accuracy(model, tokenizer, items)
    assert (out["acc"], out["acc_bytes"], out["n"]) == (0.0, 1.0, 1)


def test_acc_norm_divides_by_characters_and_acc_bytes_by_utf8_bytes(monkeypatch):
    items = [
        {"question": "q1", "choices": ["あ", "あいうえお"], "label": 1},  # 1 vs 5 chars
        {"question": "q2", "choices": ["ab", "abcdef"], "label": 0},
        {"question": "q3", "choices": ["x", "y", "z"], "label": 2},
        # 1 char / 3 bytes against 3 chars / 3 bytes: the two normalisations disagree.
        {"question": "q4", "choices": ["あ", "abc"], "label": 1},
    ]
    lls = [[-3.0, -6.0], [-2.0, -4.0], [-5.0, -5.0, -1.0], [-2.0, -3.0]]
    monkeypatch.setattr(likelihood, "choice_logliks", lambda *a, **k: lls)
    out = mcqa_accuracy(None, None, items)
    # acc: q1 wrong, q2 right, q3 right, q4 wrong.
    # acc_norm (per char): q1 right (-6/5 > -3/1), q2 wrong, q3 right, q4 right (-3/3 > -2/1).
    # acc_bytes: q1 right (-6/15 > -3/3), q2 wrong, q3 right, q4 wrong (-2/3 > -3/3).
    assert out == {
        "acc": pytest.approx(2 / 4),
        "acc_norm": pytest.approx(3 / 4),
        "acc_bytes": pytest.approx(2 / 4),
        "n": 4,
    }


def test_bits_per_char_of_a_uniform_model_is_log2_vocab_per_token(tokenizer):
    model = tiny_llama(tokenizer, uniform=True)
    texts = sample_texts(3)
    n_tokens = sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)
    chars = sum(len(t) for t in texts)
    out = domain_bits_per_char(model, tokenizer, texts, seq_len=16)
    assert out["tokens"] == n_tokens and out["chars"] == chars  # each token predicted once
    assert out["perplexity"] == pytest.approx(len(tokenizer), rel=1e-4)
    assert out["bits_per_char"] == pytest.approx(
        n_tokens * math.log2(len(tokenizer)) / chars, rel=1e-5
    )


def test_bits_per_char_is_lower_on_trained_text(tokenizer):
    import torch

    torch.set_num_threads(1)
    model = tiny_llama(tokenizer, seed=1).train()
    texts = sample_texts(3)
    ids = [tokenizer(t)["input_ids"] + [tokenizer.eos_token_id] for t in texts]
    stream = torch.tensor([i for doc in ids for i in doc])
    windows = stream[: len(stream) // 64 * 64].view(-1, 64)
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    for step in range(40):
        batch = windows[(torch.arange(8) + step * 8) % len(windows)]
        model(input_ids=batch, labels=batch).loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    rng = random.Random(0)
    alphabet = sorted(set("".join(texts)))
    noise = ["".join(rng.choice(alphabet) for _ in range(len(t))) for t in texts]
    seen = domain_bits_per_char(model, tokenizer, texts, seq_len=64)
    unseen = domain_bits_per_char(model, tokenizer, noise, seq_len=64)
    assert math.isfinite(seen["bits_per_char"]) and math.isfinite(unseen["bits_per_char"])
    assert seen["bits_per_char"] < 0.7 * unseen["bits_per_char"]


@pytest.mark.gpu
def test_cuda_matches_cpu(tokenizer):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    model = tiny_llama(tokenizer, seed=5)
    items = load_jcqa(JCQA, 20)
    texts = sample_texts(2)
    cpu = (
        mcqa_accuracy(model, tokenizer, items),
        domain_bits_per_char(model, tokenizer, texts, 64),
    )
    model.to("cuda")
    gpu = (
        mcqa_accuracy(model, tokenizer, items),
        domain_bits_per_char(model, tokenizer, texts, 64),
    )
    assert gpu[0]["n"] == cpu[0]["n"]
    assert gpu[1]["bits_per_char"] == pytest.approx(cpu[1]["bits_per_char"], rel=1e-3)
