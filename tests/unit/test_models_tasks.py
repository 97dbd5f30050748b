"""Tests of domainllm.models.tasks: YAML task files for multiple-choice log-likelihood."""

from __future__ import annotations

import gzip
import json
import re
from collections import Counter

import pytest
import yaml

from domainllm.errors import ConfigError, DataError
from domainllm.evaluate.likelihood import JCQA_PROMPT, load_jcqa
from domainllm.models.metrics import check_weights, selection_metrics
from domainllm.models.tasks import effective_max_items, load_task, load_tasks, task_items
from tests.unit._tiny_lm import JCQA, ROOT, SAMPLES

TASKS = ROOT / "config" / "tasks"
CHABSA = SAMPLES / "chabsa" / "chabsa_all.jsonl"


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    # Task files name their data relative to the working directory (the repository root).
    monkeypatch.chdir(ROOT)


def write_task(tmp_path, filename="t.yaml", **task):
    path = tmp_path / filename
    path.write_text(yaml.safe_dump(task, allow_unicode=True), encoding="utf-8")
    return path


def mini_task(tmp_path, data, **over):
    """A task over ``data`` (a list of records written as JSONL) with fixed label words."""
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in data))
    task = {
        "name": "mini",
        "path": str(path),
        "prompt": "文:{text}\n評価:",
        "choices": {"words": ["良い", "悪い"]},
        "label": {"field": "polarity", "values": ["pos", "neg"]},
        **over,
    }
    return load_task(write_task(tmp_path, **task))


def test_shipped_jcqa_task_file_gives_the_jcqa_items():
    """config/tasks/jcommonsenseqa.yaml reproduces load_jcqa + JCQA_PROMPT item by item,
    so the agreement with lm-evaluation-harness carries over to the task file."""
    task = load_task(TASKS / "jcommonsenseqa.yaml")
    assert (task.name, task.max_items, task.metrics) == ("jcqa", 150, ("acc", "acc_norm"))
    items = task_items(task)
    ref = load_jcqa(JCQA, 150)
    assert len(items) == 150
    assert [i["context"] for i in items] == [
        JCQA_PROMPT.format(question=r["question"]) for r in ref
    ]
    assert [i["choices"] for i in items] == [r["choices"] for r in ref]
    assert [i["label"] for i in items] == [r["label"] for r in ref]
    assert items[0]["id"] == "1" and items[0]["delimiter"] == ""
    # base.selection.max_items caps the task's own limit.
    assert len(task_items(task, max_items=7)) == 7
    assert effective_max_items(task, 500) == 150


def test_shipped_chabsa_task_explodes_opinions_and_maps_label_words():
    task = load_task(TASKS / "chabsa_sentiment.yaml")
    items = task_items(task)
    assert len(items) == 100
    assert all(i["choices"] == ["ポジティブ", "ネガティブ", "ニュートラル"] for i in items)
    # Each item is one opinion: its target and the sentence it sits in, with its polarity.
    lines = CHABSA.read_text(encoding="utf-8").splitlines()
    polarity = {"positive": 0, "negative": 1, "neutral": 2}
    for item in items[:20]:
        line, sent, op = item["id"].split()
        doc = json.loads(lines[int(line) - 1])
        sentence = doc["sentences"][int(sent[len("sentences[") : -1])]
        opinion = sentence["opinions"][int(op[len("opinions[") : -1])]
        assert (
            item["context"] == f"文:{sentence['sentence']}\n「{opinion['target']}」についての評価:"
        )
        assert item["label"] == polarity[opinion["polarity"]]
    # The seeded draw spreads over many reports (the first 100 opinions lie in three).
    assert len({i["id"].split()[0] for i in items}) > 40
    assert set(Counter(i["label"] for i in items)) >= {0, 1}
    assert task_items(task) == items  # the same draw every time


def test_seed_draws_a_sample_in_file_order(tmp_path):
    data = [{"text": f"t{i}", "polarity": "pos" if i % 2 else "neg"} for i in range(50)]
    first = task_items(mini_task(tmp_path, data, max_items=5))
    assert [i["context"] for i in first] == [f"文:t{i}\n評価:" for i in range(5)]
    drawn = task_items(mini_task(tmp_path, data, max_items=5, seed=1))
    lines = [int(i["id"]) for i in drawn]
    assert lines == sorted(lines) and lines != [1, 2, 3, 4, 5]
    assert drawn == task_items(mini_task(tmp_path, data, max_items=5, seed=1))
    assert drawn != task_items(mini_task(tmp_path, data, max_items=5, seed=2))


def test_choice_forms_and_formats(tmp_path):
    # A list field of choices with an index label, a delimiter, from a gzipped JSON array.
    data = [{"q": "空の色は", "options": ["青", "赤", "緑"], "answer": 0}]
    path = tmp_path / "arr.json.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=False)
    task = load_task(
        write_task(
            tmp_path,
            name="arr",
            path=str(path),
            prompt="Q: {q}\nA:",
            target_delimiter=" ",
            choices={"field": "options"},
            label={"field": "answer"},
            metrics=["acc", "acc_bytes"],
        )
    )
    (item,) = task_items(task)
    assert item == {
        "id": "item 1",
        "context": "Q: 空の色は\nA:",
        "delimiter": " ",
        "choices": ["青", "赤", "緑"],
        "label": 0,
    }
    assert selection_metrics([task])["arr_acc_bytes"] is True
    assert "arr_acc_norm" not in selection_metrics([task])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"promt": "x"}, r"unknown key 'promt'"),
        ({"choices": {"fields": ["a", "b"], "words": ["x", "y"]}}, r"key 'choices'.*exactly one"),
        ({"choices": {}}, r"key 'choices'.*exactly one.*got none"),
        ({"choices": {"word": ["x", "y"]}}, r"unknown key 'choices.word'"),
        ({"label": {"field": "p", "values": ["a", "b", "c"]}}, r"key 'label.values'.*3 values"),
        ({"label": {"values": ["a", "b"]}}, r"key 'label'.*'field' is a required"),
        ({"name": "Mini-Task"}, r"key 'name'"),
        ({"metrics": ["acc", "f1"]}, r"key 'metrics\[1\]'"),
        ({"max_items": 0}, r"key 'max_items'"),
        ({"prompt": "文:{text\n"}, r"key 'prompt'.*not a valid template"),
        ({"prompt": "文:{0}"}, r"key 'prompt'.*not a field name"),
    ],
)
def test_bad_task_files_name_file_and_key(tmp_path, change, message):
    task = {
        "name": "mini",
        "path": "x.jsonl",
        "prompt": "文:{text}",
        "choices": {"words": ["良い", "悪い"]},
        "label": {"field": "polarity", "values": ["pos", "neg"]},
    }
    task.update(change)
    task = {k: v for k, v in task.items() if v is not None}
    path = write_task(tmp_path, **task)
    with pytest.raises(ConfigError, match=rf"(?s){re.escape(str(path))}: .*{message}"):
        load_task(path)


def test_missing_required_keys_and_bad_yaml(tmp_path):
    path = write_task(tmp_path, name="mini", path="x.jsonl")
    with pytest.raises(ConfigError, match=rf"(?s){path}: .*'prompt' is a required property"):
        load_task(path)
    path.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match=rf"{path}: not valid YAML"):
        load_task(path)
    with pytest.raises(ConfigError, match="nothing.yaml: task file not found"):
        load_task(tmp_path / "nothing.yaml")


def test_task_names_must_be_unique(tmp_path):
    a = TASKS / "jcommonsenseqa.yaml"
    b = write_task(tmp_path, **yaml.safe_load(a.read_text(encoding="utf-8")))
    with pytest.raises(ConfigError, match=rf"{b}: key 'name': task 'jcqa' is also the name in"):
        load_tasks([str(a), str(b)])


def test_records_that_do_not_fit_name_the_line_and_the_key(tmp_path):
    good = {"text": "増収", "polarity": "pos"}
    cases = [
        ({"text": "x", "polarity": "meh"}, r"data.jsonl:2: label 'meh'.*key 'label.values'"),
        ({"polarity": "pos"}, r"data.jsonl:2: no field 'text'.*key 'prompt'"),
        ({"text": "x"}, r"data.jsonl:2: no field 'polarity'.*key 'label.field'"),
    ]
    for bad, message in cases:
        task = mini_task(tmp_path, [good, bad])
        with pytest.raises(DataError, match=message):
            task_items(task)
        assert task.file in str(pytest.raises(DataError, task_items, task).value)
    # An index label outside the choices, and a label that is no index.
    task = mini_task(tmp_path, [{"text": "x", "polarity": 2}], label={"field": "polarity"})
    with pytest.raises(DataError, match=r"data.jsonl:1: label 2 outside 0..1"):
        task_items(task)
    task = mini_task(tmp_path, [{"text": "x", "polarity": "pos"}], label={"field": "polarity"})
    with pytest.raises(DataError, match=r"data.jsonl:1: label 'pos' is not a choice index"):
        task_items(task)
    # explode names the nested position.
    task = mini_task(
        tmp_path,
        [{"text": "x", "ops": [{"polarity": "pos"}, {"polarity": "bad"}]}],
        explode=["ops"],
    )
    with pytest.raises(DataError, match=r"data.jsonl:1 ops\[1\]: label 'bad'"):
        task_items(task)
    task = mini_task(tmp_path, [{"text": "x", "ops": "no"}], explode=["ops"])
    with pytest.raises(DataError, match=r"data.jsonl:1: field 'ops' is missing or not a list"):
        task_items(task)
    task = mini_task(tmp_path, [good], path=str(tmp_path / "gone.jsonl"))
    with pytest.raises(DataError, match=r"gone.jsonl: data file not found.*key 'path'"):
        task_items(task)


def test_weights_may_name_task_metrics_only_of_listed_tasks():
    tasks = load_tasks([str(TASKS / "jcommonsenseqa.yaml"), str(TASKS / "chabsa_sentiment.yaml")])
    metrics = selection_metrics(tasks)
    assert {"chabsa_sentiment_acc", "chabsa_sentiment_acc_norm", "jcqa_acc_norm"} <= set(metrics)
    assert metrics["corpus_tokens"] is False and metrics["chars_per_token"] is True
    check_weights({"chabsa_sentiment_acc": 1.0, "unk_rate": 0.5}, metrics)
    with pytest.raises(ConfigError, match=r"base.selection.weights.*jsts_acc"):
        check_weights({"jsts_acc": 1.0}, metrics)
    with pytest.raises(ConfigError, match=r"base.selection.weights.*chabsa_sentiment_acc"):
        check_weights({"chabsa_sentiment_acc": 1.0}, selection_metrics(tasks[:1]))
