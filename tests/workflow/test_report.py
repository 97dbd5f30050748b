"""`snakemake --report`: which results the report holds, and captions that render.

The report is built for real from the end-to-end run (tests/e2e/test_pipeline.py,
test_report_holds_every_result, with :func:`read_report` below); these tests load the
workflow in-process (well under a second) and check the ``report()`` markers and
their captions, so a renamed output or a broken caption fails here, not at the end
of a run.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.conftest import REPO
from tests.workflow._loaded import loaded_workflow

# Rule -> the caption of each of its outputs in the report: the selection table, the
# corpus histogram, both loss curves, the quantisation table, the evaluation table and
# its plots.
EXPECTED = {
    "select_domain": {"selection_hist.rst"},
    "select_base": {"selection_table.rst"},
    "train_cpt": {"loss_cpt.rst"},
    "train_sft": {"loss_sft.rst"},
    "quantize_quality": {"quantize_quality.rst"},
    "eval_table": {"eval_table.rst", "metrics_by_version.rst", "score_distributions.rst"},
}


def read_report(path: Path) -> tuple[dict, dict]:
    """The results and categories a Snakemake HTML report embeds.

    Snakemake writes them as two JavaScript objects (``var results = {...};`` and
    ``var categories = {...};``); each result holds its caption as HTML and the file
    itself as a base64 data URI.

    Returns:
        ``{path: entry}`` with the decoded file under ``entry["bytes"]``, and
        ``{category: {subcategory: [path, ...]}}``.
    """
    html = path.read_text(encoding="utf-8")
    found = {}
    for name in ("results", "categories"):
        m = re.search(rf"^\s*var {name} = (\{{.*\}});\s*$", html, re.M)
        assert m, f"{path}: no '{name}' object in the report"
        found[name] = json.loads(m.group(1))
    for entry in found["results"].values():
        entry["bytes"] = base64.b64decode(entry["data_uri"].split("base64,", 1)[1])
    return found["results"], found["categories"]


def _marked(workflow) -> dict[str, list]:
    """Rule name -> its outputs' report markers."""
    from snakemake.io import get_flag_value, is_flagged

    out: dict[str, list] = {}
    for rule in workflow.rules:
        for f in rule.output:
            if is_flagged(f, "report"):
                out.setdefault(rule.name, []).append((rule, f, get_flag_value(f, "report")))
    return out


def _path(source_file) -> Path:
    return Path(source_file.get_path_or_uri(secret_free=True))


@pytest.fixture(scope="module", params=["none", "torchrun"], ids=["script", "launcher"])
def marked(request, tmp_path_factory):
    """The report markers, with train_cpt as a script rule and as a launcher rule."""
    config = {"cpt": {"launcher": request.param}}
    with loaded_workflow(tmp_path_factory.mktemp("report"), config=config) as workflow:
        yield _marked(workflow), workflow


def test_every_named_result_is_marked_for_the_report(marked):
    by_rule, _ = marked
    captions = {
        rule: {_path(obj.caption).name for _, _, obj in entries}
        for rule, entries in by_rule.items()
    }
    assert captions == EXPECTED
    for rule, entries in by_rule.items():
        for _, f, obj in entries:
            assert obj.category and re.match(r"\d\. ", obj.category), (rule, f, obj.category)
            if f.is_directory:  # model folders: only the loss curve goes in
                assert obj.patterns == ["{name}_curve.png"], (rule, f)


def test_every_caption_is_used_and_the_workflow_has_a_description(marked):
    by_rule, workflow = marked
    used = {_path(obj.caption).name for entries in by_rule.values() for _, _, obj in entries}
    described = _path(workflow.report_text)
    assert described.resolve() == REPO / "report/workflow.rst"
    assert {p.name for p in (REPO / "report").glob("*.rst")} == used | {described.name}


def test_captions_render_without_warnings(marked, tmp_path):
    """Each caption renders as Snakemake renders it (Jinja, then reStructuredText), with
    undefined names and reStructuredText warnings as errors; included tables are read."""
    from docutils.core import publish_parts
    from jinja2 import Environment, StrictUndefined

    by_rule, workflow = marked
    table = tmp_path / "table.md"
    table.write_text("| a | b |\n|---|---:|\n| x | 1 |\n")
    env = Environment(undefined=StrictUndefined)
    for rule_name, entries in by_rule.items():
        for rule, _, obj in entries:
            # Every named output is a small file, so `.. include::` of any of them works.
            stub = SimpleNamespace(
                output=SimpleNamespace(**{k: str(table) for k in rule.output._names}),
                params=SimpleNamespace(**{k: "value" for k in rule.params._names}),
                config=workflow.config,
                rule=rule_name,
            )
            source = _path(obj.caption).read_text()
            text = env.from_string(source).render(snakemake=stub)
            body = publish_parts(
                text, writer="html", settings_overrides={"halt_level": 2, "report_level": 5}
            )["body"]
            assert len(body) > 100, (rule_name, body)
            if ".. include::" in source:
                assert "| x | 1 |" in body, (rule_name, body)
