"""Our JCommonsenseQA accuracy equals lm-evaluation-harness's on the same model and items.

lm-evaluation-harness (pip package ``lm_eval``) runs a local task file over the
same items, with the same prompt and no target delimiter, through its HF model
wrapper; acc and acc_norm must agree to within 0.5 points (one item of the 40
is 2.5 points, so they must agree exactly), and so must every choice's
log-likelihood. The same holds for the items of every shipped task file
(config/tasks/*.yaml) run through lm_eval as data columns.
"""

from __future__ import annotations

import json

import pytest

from domainllm.evaluate.likelihood import JCQA_PROMPT, choice_logliks, load_jcqa, mcqa_accuracy
from tests.unit import _tiny_lm
from tests.unit._tiny_lm import JCQA, sample_texts

lm_eval = pytest.importorskip("lm_eval")

N_ITEMS = 40
TASK = """\
task: jcqa_domainllm_check
dataset_path: json
dataset_kwargs:
  data_files:
    validation: {data}
validation_split: validation
output_type: multiple_choice
doc_to_text: "{prompt}"
doc_to_choice: "{{{{[choice0, choice1, choice2, choice3, choice4]}}}}"
doc_to_target: label
target_delimiter: ""
metric_list:
  - metric: acc
  - metric: acc_norm
metadata:
  version: 1.0
"""


def test_accuracy_matches_lm_evaluation_harness(tmp_path):
    import torch
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from domainllm.models.build import train_tokenizer

    torch.set_num_threads(1)
    items = load_jcqa(JCQA, N_ITEMS)
    texts = sample_texts(20) + [i["question"] + "".join(i["choices"]) for i in items]
    tokenizer = train_tokenizer(texts, 800)
    model = _tiny_lm.tiny_llama(tokenizer, seed=3, tie_word_embeddings=False).eval()

    ours = mcqa_accuracy(model, tokenizer, items, batch_size=8)
    our_lls = choice_logliks(model, tokenizer, items, batch_size=8)

    data = tmp_path / "jcqa.jsonl"
    with open(JCQA, encoding="utf-8") as src, open(data, "w", encoding="utf-8") as dst:
        for _, line in zip(range(N_ITEMS), src, strict=False):
            dst.write(line)
    prompt = JCQA_PROMPT.replace("{question}", "{{question}}").replace("\n", "\\n")
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "jcqa.yaml").write_text(TASK.format(data=data, prompt=prompt), encoding="utf-8")

    # add_bos_token: our encoding puts <s> in front of the context, as the model was trained.
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=8, add_bos_token=True)
    results = lm_eval.simple_evaluate(
        model=lm,
        tasks=["jcqa_domainllm_check"],
        task_manager=TaskManager(include_path=str(tasks)),
        num_fewshot=0,
        log_samples=True,
    )
    theirs = results["results"]["jcqa_domainllm_check"]
    assert ours["n"] == N_ITEMS
    assert abs(ours["acc"] - theirs["acc,none"]) <= 0.005, (ours, json.dumps(theirs))
    assert abs(ours["acc_norm"] - theirs["acc_norm,none"]) <= 0.005, (ours, json.dumps(theirs))
    # Stronger than the accuracies: every choice's log-likelihood agrees.
    samples = sorted(results["samples"]["jcqa_domainllm_check"], key=lambda s: s["doc_id"])
    their_lls = [[float(r[0]) for r in s["filtered_resps"]] for s in samples]
    assert len(their_lls) == N_ITEMS
    for mine, other in zip(our_lls, their_lls, strict=True):
        assert mine == pytest.approx(other, abs=1e-3)


TASK_FILE_CHECK = """\
task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    validation: {data}
validation_split: validation
output_type: multiple_choice
doc_to_text: context
doc_to_choice: choices
doc_to_target: label
target_delimiter: ""
metric_list:
  - metric: acc
  - metric: acc_norm
metadata:
  version: 1.0
"""


def test_task_files_match_lm_evaluation_harness(tmp_path, monkeypatch):
    """Every shipped task file (JCommonsenseQA, and chABSA over label words): our acc,
    acc_norm and every choice's log-likelihood on its items equal lm_eval's on the same
    items, model and prompts."""
    import torch
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from domainllm.models.build import train_tokenizer
    from domainllm.models.tasks import load_tasks, task_items

    torch.set_num_threads(1)
    monkeypatch.chdir(_tiny_lm.ROOT)
    specs = load_tasks(sorted(str(p) for p in (_tiny_lm.ROOT / "config" / "tasks").glob("*.yaml")))
    assert {s.name for s in specs} >= {"jcqa", "chabsa_sentiment"}
    items = {s.name: task_items(s, N_ITEMS) for s in specs}
    texts = sample_texts(20) + [
        i["context"] + "".join(i["choices"]) for its in items.values() for i in its
    ]
    tokenizer = train_tokenizer(texts, 800)
    model = _tiny_lm.tiny_llama(tokenizer, seed=5, tie_word_embeddings=False).eval()

    tasks = tmp_path / "tasks"
    tasks.mkdir()
    for name, its in items.items():
        assert all(i["delimiter"] == "" for i in its)
        data = tmp_path / f"{name}.jsonl"
        with open(data, "w", encoding="utf-8") as f:
            for i in its:
                row = {"context": i["context"], "choices": i["choices"], "label": i["label"]}
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        check = f"{name}_domainllm_check"
        (tasks / f"{check}.yaml").write_text(
            TASK_FILE_CHECK.format(name=check, data=data), encoding="utf-8"
        )
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=8, add_bos_token=True)
    results = lm_eval.simple_evaluate(
        model=lm,
        tasks=[f"{name}_domainllm_check" for name in items],
        task_manager=TaskManager(include_path=str(tasks)),
        num_fewshot=0,
        log_samples=True,
    )
    for name, its in items.items():
        ours = mcqa_accuracy(model, tokenizer, its, batch_size=8)
        theirs = results["results"][f"{name}_domainllm_check"]
        assert ours["n"] == len(its) == N_ITEMS
        assert abs(ours["acc"] - theirs["acc,none"]) <= 0.005, (name, ours, theirs)
        assert abs(ours["acc_norm"] - theirs["acc_norm,none"]) <= 0.005, (name, ours, theirs)
        samples = sorted(results["samples"][f"{name}_domainllm_check"], key=lambda s: s["doc_id"])
        their_lls = [[float(r[0]) for r in s["filtered_resps"]] for s in samples]
        for mine, other in zip(choice_logliks(model, tokenizer, its), their_lls, strict=True):
            assert mine == pytest.approx(other, abs=1e-3)
