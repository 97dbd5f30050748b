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
    sliding_windows,
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


@pytest.mark.parametrize(
    ("n", "seq_len", "stride"),
    [(1, 4, 2), (2, 4, 4), (10, 4, 4), (10, 4, 1), (37, 8, 3), (9, 8, 6)],
)
def test_sliding_windows_score_every_token_once(n, seq_len, stride):
    seq = list(range(100, 100 + n))
    windows = sliding_windows(seq, seq_len, stride)
    scored = []
    for inputs, targets, skip in windows:
        assert 1 <= len(inputs) <= seq_len and len(targets) == len(inputs)
        assert targets == seq[seq.index(inputs[0]) + 1 :][: len(inputs)]  # next tokens
        for pos in range(skip, len(targets)):
            # Each scored token sees its whole window before it: seq_len - stride at least,
            # unless the document starts inside the window.
            context = pos + 1
            assert context >= min(seq_len - stride + 1, seq.index(targets[pos]))
            scored.append(targets[pos])
    assert scored == seq[1:]  # every token after the first, once, in order
    if stride == seq_len:  # disjoint windows
        assert all(skip == 0 for _, _, skip in windows)


def test_sliding_windows_reject_a_stride_that_skips_tokens():
    with pytest.raises(ValueError, match="stride"):
        sliding_windows(list(range(10)), 4, 5)
    with pytest.raises(ValueError, match="stride"):
        sliding_windows(list(range(10)), 4, 0)


def hf_guide_nll(model, seq: list[int], max_length: int, stride: int) -> tuple[float, int]:
    """Summed NLL and predicted tokens of one sequence, computed literally as in the
    Hugging Face guide "Perplexity of fixed-length models" (labels -100 outside the
    new tokens of each window, the loss un-averaged by its valid-token count)."""
    import torch

    input_ids = torch.tensor([seq])
    nll, n_tokens, prev_end = 0.0, 0, 0
    for begin in range(0, len(seq), stride):
        end = min(begin + max_length, len(seq))
        trg_len = end - prev_end
        ids = input_ids[:, begin:end]
        target = ids.clone()
        target[:, :-trg_len] = -100
        with torch.no_grad():
            loss = model(ids, labels=target).loss
        valid = int((target[:, 1:] != -100).sum())  # the labels the shifted loss averages
        nll += float(loss) * valid
        n_tokens += valid
        prev_end = end
        if end == len(seq):
            break
    return nll, n_tokens


@pytest.mark.parametrize("stride", [64, 24, 7])
def test_sliding_window_perplexity_matches_the_hugging_face_guide(tokenizer, stride):
    """Our windows of seq_len inputs are the guide's windows of max_length = seq_len + 1
    tokens (the last token of a window is only a label), so every token is predicted
    from up to seq_len tokens; then the two agree token for token."""
    import torch

    torch.set_num_threads(1)
    model = tiny_llama(tokenizer, seed=2)
    texts = [t[:300] for t in sample_texts(3)]
    ours = domain_bits_per_char(model, tokenizer, texts, seq_len=64, batch_size=5, stride=stride)
    nll = n = 0
    for t in texts:
        seq = [tokenizer.bos_token_id] + tokenizer(t, add_special_tokens=False)["input_ids"]
        a, b = hf_guide_nll(model, seq, 64 + 1, stride)
        nll, n = nll + a, n + b
    assert ours["tokens"] == n and ours["stride"] == stride
    assert ours["perplexity"] == pytest.approx(math.exp(nll / n), rel=1e-4)
    assert ours["bits_per_char"] == pytest.approx(nll / math.log(2) / ours["chars"], rel=1e-4)


def test_more_context_lowers_perplexity_of_a_trained_model(tokenizer):
    """On text the model has learnt, a smaller stride (more context per token) helps."""
    import torch

    torch.set_num_threads(1)
    model = tiny_llama(tokenizer, seed=1).train()
    texts = sample_texts(2)
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
    disjoint = domain_bits_per_char(model, tokenizer, texts, seq_len=32)
    sliding = domain_bits_per_char(model, tokenizer, texts, seq_len=32, stride=8)
    assert sliding["tokens"] == disjoint["tokens"]
    assert sliding["windows"] > 3 * disjoint["windows"]
    assert sliding["bits_per_char"] < disjoint["bits_per_char"]


def test_task_file_items_score_their_context_and_delimiter(tokenizer):
    """Items with a ready context (task files) score ``context + delimiter + choice``;
    acc_norm divides by the choice's own length."""
    model = tiny_llama(tokenizer, seed=4)
    items = [
        {"context": "文:増収増益となりました\n評価:", "choices": ["良い", "悪い"], "label": 0},
        {"context": "Q: 空は\nA:", "delimiter": " ", "choices": ["青い", "赤い"], "label": 1},
    ]
    lls = likelihood.choice_logliks(model, tokenizer, items)
    want = continuation_logliks(
        model,
        tokenizer,
        [(items[0]["context"], c) for c in items[0]["choices"]]
        + [(items[1]["context"], " " + c) for c in items[1]["choices"]],
    )
    assert [x for ll in lls for x in ll] == pytest.approx(want, abs=1e-5)
    jcqa = load_jcqa(JCQA, 3)
    as_context = [{"context": JCQA_PROMPT.format(question=i["question"]), **i} for i in jcqa]
    ours, ref = (
        [x for ll in likelihood.choice_logliks(model, tokenizer, batch) for x in ll]
        for batch in (as_context, jcqa)
    )
    assert ours == pytest.approx(ref, abs=1e-6)


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
