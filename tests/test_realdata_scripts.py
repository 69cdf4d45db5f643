"""Fast checks of the real-data scripts (scripts/pandalm_priority.py, scripts/llmfao_checks.py).

No language model runs here: only the data conversions, on the real files in ../shared/data.
"""

from __future__ import annotations

import importlib.util
import json
import pathlib

import numpy as np
import pandas as pd
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"_script_{name}", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def pandalm(shared_data):
    module = _script("pandalm_priority")
    path = shared_data / "pandalm" / "testset-v1.json"
    return module, module.read_pandalm(path), json.loads(path.read_text())


def test_pandalm_votes_counts(pandalm):
    module, items, raw = pandalm
    votes = module.pandalm_votes(items)
    assert len(items) == 999
    assert len(votes) == 2997
    assert list(votes.columns) == ["prompt_id", "model_a", "model_b", "winner", "annotator"]
    models = set(votes["model_a"]) | set(votes["model_b"])
    assert models == {"bloom-7b", "llama-7b", "cerebras-gpt-6.7B", "pythia-6.9b", "opt-7b"}
    assert votes.groupby("prompt_id").size().eq(3).all()
    # Label counts straight from the JSON, without the script's conversion.
    labels = [item[a] for item in raw for a in ("annotator1", "annotator2", "annotator3")]
    assert (votes["winner"] == "tie").sum() == labels.count(0) == 326
    assert (votes["winner"] == "model_a").sum() == labels.count(1)
    assert (votes["winner"] == "model_b").sum() == labels.count(2)
    # Per annotator too, and model_a is the first model of cmp_key.
    for a in ("annotator1", "annotator2", "annotator3"):
        assert (votes.loc[votes["annotator"] == a, "winner"] == "tie").sum() == sum(item[a] == 0 for item in raw)
    first = votes.drop_duplicates("prompt_id").set_index("prompt_id")
    for item in raw[:50]:
        m1, m2 = item["cmp_key"].split("_")
        assert (first.loc[item["idx"], "model_a"], first.loc[item["idx"], "model_b"]) == (m1, m2)


def test_pandalm_votes_load_as_arena_votes(pandalm, tmp_path):
    from jaxrank import load_votes

    module, items, _ = pandalm
    path = tmp_path / "votes.csv"
    module.pandalm_votes(items).to_csv(path, index=False)
    battles = load_votes(path)
    assert battles.num_votes == 2997
    assert len(battles.models) == 5


def test_pandalm_text_fields(pandalm):
    module, items, raw = pandalm
    # The file stores a few answers as JSON booleans; they become text.
    assert sum(isinstance(item["response1"], bool) for item in raw) == 4
    assert all(isinstance(it["response1"], str) and isinstance(it["response2"], str) for it in items)
    with_input = next(it for it in items if it["input"].strip())
    assert module.prompt_text(with_input) == f"{with_input['instruction'].strip()}\n\n{with_input['input'].strip()}"


def test_pandalm_refuses_to_overwrite(tmp_path, capsys):
    module = _script("pandalm_priority")
    (tmp_path / "votes.csv").write_text("x\n")
    assert module.main(["--out", str(tmp_path)]) == 2
    assert "--force" in capsys.readouterr().err
    assert (tmp_path / "votes.csv").read_text() == "x\n"


def test_llmfao_prompt_scores_and_prompts(shared_data, tmp_path):
    from jaxrank.lm.prompts import read_prompts

    module = _script("llmfao_checks")
    crowd, gpt4, prompts = module.read_llmfao(shared_data / "llmfao")
    assert crowd["prompt"].nunique() == 13 and len(prompts) == 13
    decisive = module.prompt_scores(gpt4, None)["gpt4_decisive"]
    raw = pd.read_csv(shared_data / "llmfao" / "gpt4-crowd-comparisons.csv")
    for pid, group in raw.groupby("prompt"):
        assert decisive[str(pid)] == pytest.approx(sum(w != "tie" for w in group["winner"]) / len(group))
    out = tmp_path / "prompts.jsonl"
    assert module.main(["--write-prompts", str(out)]) == 0
    read = read_prompts(out)
    assert sorted(p.id for p in read) == sorted(decisive.index)


def test_pandalm_votes_as_prompt_votes(pandalm, tmp_path):
    from jaxrank import load_votes

    module, items, raw = pandalm
    path = tmp_path / "votes.csv"
    module.pandalm_votes(items).to_csv(path, index=False)
    votes = load_votes(path)
    assert (votes.num_votes, votes.num_prompts, votes.num_models) == (2997, 999, 5)
    assert votes.votes_per_prompt().tolist() == [3] * 999
    ties = dict(zip(votes.prompt_ids, votes.ties_per_prompt().tolist()))
    for item in raw:
        assert ties[str(item["idx"])] == sum(item[a] == 0 for a in ("annotator1", "annotator2", "annotator3"))


@pytest.mark.slow
def test_pandalm_scorer_on_two_items(pandalm, smollm2):
    """The KV-cache scorer on real items: its log-likelihoods equal jaxrank.lm.pipeline's sequence scorer
    (the script's self-check raises otherwise), identical answers score exactly 0, and the scores are finite."""
    module, items, _ = pandalm
    item = dict(items[1])
    twin = dict(item, response2=item["response1"])  # the same answer twice: no divergence, no gap
    details, stats = module.score_items([item, twin], smollm2, batch_size=2, max_prompt_tokens=64,
                                        max_response_tokens=16, self_check=True, log=lambda *_: None)
    assert stats["batches"] == 1
    assert details["divergence"][1] == pytest.approx(0.0, abs=1e-6)
    assert details["jeffreys"][1] == pytest.approx(0.0, abs=1e-5)
    assert details["loglik_1"][1] == pytest.approx(details["loglik_2"][1], rel=1e-6)
    assert np.isfinite(details["divergence"][0]) and details["divergence"][0] > 0.0
    assert details["loglik_1"][0] == pytest.approx(details["loglik_1"][1], rel=1e-6)  # same prompt, same answer 1
