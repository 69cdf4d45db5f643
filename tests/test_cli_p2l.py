"""`jaxrank p2l train | leaderboard | route`, in-process, on precomputed features (and one real-encoder run)."""

import json

import numpy as np
import pandas as pd
import pytest

from jaxrank.cli import main
from jaxrank.p2l import load_p2l

MODELS = ["alpha", "beta", "gamma"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """Votes on 30 prompts whose best model depends on the prompt's first feature, and those features."""
    d = tmp_path_factory.mktemp("p2l_cli")
    rng = np.random.default_rng(0)
    num_prompts = 30
    feats = rng.normal(size=(num_prompts, 4)).astype(np.float32)
    beta = np.stack([2 * feats[:, 0], -2 * feats[:, 0], np.zeros(num_prompts)], 1)
    rows = []
    for p in range(num_prompts):
        for _ in range(12):
            i, j = rng.choice(3, 2, replace=False)
            u = rng.random()
            pa = 1 / (1 + np.exp(-(beta[p, i] - beta[p, j])))
            winner = "tie" if u < 0.1 else ("model_a" if rng.random() < pa else "model_b")
            rows.append({"model_a": MODELS[i], "model_b": MODELS[j], "winner": winner, "question": f"prompt number {p}"})
    pd.DataFrame(rows).to_csv(d / "votes.csv", index=False)
    np.save(d / "feats.npy", feats)
    (d / "prompts.txt").write_text("".join(f"prompt number {p}\n" for p in range(num_prompts)))
    (d / "costs.json").write_text(json.dumps({"alpha": 1.0, "beta": 0.1, "gamma": 0.5}))
    return d


@pytest.fixture(scope="module")
def trained(workdir):
    code = main(["p2l", "train", str(workdir / "votes.csv"), "--prompts-column", "question", "--features",
                 str(workdir / "feats.npy"), "--out", str(workdir / "model"), "--epochs", "15", "--lr", "0.05",
                 "--batch-size", "32", "--val-fraction", "0.2"])
    assert code == 0
    return workdir / "model"


def test_train_saves_a_model(trained, capsys):
    model = load_p2l(trained)
    assert model.models == tuple(MODELS) and model.loss == "bt-tie" and model.encoder is None
    assert model.config["in_features"] == 4 and model.history["epochs"] >= 1
    with pytest.raises(ValueError, match="records no encoder"):
        model.predict(["a prompt"])


def test_train_default_is_the_residual_head_and_reports_the_global_fit(trained, workdir, capsys):
    model = load_p2l(trained)
    h = model.history
    assert model.config["residual"] and model.config["chosen_delta_l2"] in model.config["delta_l2"]
    assert h["best_val_nll"] <= h["baseline_val_nll"] + 1e-6  # the global fit is a candidate
    code = main(["p2l", "train", str(workdir / "votes.csv"), "--prompts-column", "question", "--features",
                 str(workdir / "feats.npy"), "--out", str(workdir / "plain"), "--epochs", "2", "--lr", "0.05",
                 "--batch-size", "32", "--val-fraction", "0.2", "--delta-l2", "none"])
    assert code == 0
    out = capsys.readouterr().out
    plain = load_p2l(workdir / "plain")
    assert "(plain)" in out and f"prompt-blind global fit {plain.history['baseline_val_nll']:.4f}" in out
    assert not plain.config.get("residual") and plain.config["weight_decay"] == 1e-4


def test_leaderboard_and_plot(trained, workdir, capsys):
    out, plot = workdir / "lb.csv", workdir / "lb.png"
    code = main(["p2l", "leaderboard", str(trained), str(workdir / "prompts.txt"), "--features",
                 str(workdir / "feats.npy"), "--bootstrap", "20", "--out", str(out), "--plot", str(plot)])
    assert code == 0
    frame = pd.read_csv(out)
    assert list(frame.columns) == ["model", "rating", "lower", "upper", "rank_ub"]
    assert sorted(frame.model) == sorted(MODELS)
    assert (frame.lower <= frame.rating + 1e-3).all() and (frame.rating <= frame.upper + 1e-3).all()
    assert plot.stat().st_size > 0
    assert "P2L leaderboard of 30 prompts" in capsys.readouterr().out
    # Refuses to overwrite without --force.
    code = main(["p2l", "leaderboard", str(trained), str(workdir / "prompts.txt"), "--features",
                 str(workdir / "feats.npy"), "--out", str(out)])
    assert code == 2
    assert capsys.readouterr().err.strip().startswith(f"jaxrank: error: --out {out} already exists")


def test_per_prompt_leaderboards(trained, workdir, capsys):
    """--per-prompt: one ranked leaderboard per prompt, the head's coefficients centred on the Elo scale."""
    out = workdir / "per_prompt.csv"
    code = main(["p2l", "leaderboard", str(trained), str(workdir / "prompts.txt"), "--features",
                 str(workdir / "feats.npy"), "--per-prompt", str(out)])
    assert code == 0, capsys.readouterr().err
    frame = pd.read_csv(out, dtype={"prompt_id": str})
    assert list(frame.columns) == ["prompt_id", "rank", "model", "rating", "theta"] and len(frame) == 30 * 3
    beta, _ = load_p2l(trained).coefficients(np.load(workdir / "feats.npy"))
    beta = np.asarray(beta, np.float64)
    feats = np.load(workdir / "feats.npy")
    for p, group in frame.groupby("prompt_id", sort=False):
        i = list(frame["prompt_id"].unique()).index(p)
        assert list(group["rank"]) == sorted(group["rank"]) and group["rank"].iloc[0] == 1
        expected = [MODELS[j] for j in np.argsort(-beta[i], kind="stable")]
        assert list(group["model"]) == expected
        np.testing.assert_allclose(group["rating"].mean(), 1000.0, atol=1e-3)
    # The simulated truth: alpha is best where feature 0 is large, beta where it is small.
    top = frame[frame["rank"] == 1].set_index("prompt_id")["model"]
    strong = np.argsort(feats[:, 0])
    assert (top.iloc[strong[-5:]] == "alpha").mean() >= 0.8 and (top.iloc[strong[:5]] == "beta").mean() >= 0.8


def test_route_follows_the_prompt(trained, workdir, capsys):
    out = workdir / "route.csv"
    code = main(["p2l", "route", str(trained), str(workdir / "prompts.txt"), "--features", str(workdir / "feats.npy"),
                 "--costs", str(workdir / "costs.json"), "--budget", "2.0", "--out", str(out)])
    assert code == 0
    frame = pd.read_csv(out)
    assert len(frame) == 30 and set(frame.columns) >= {"id", "model", "expected_win_rate", "expected_cost"}
    feats = np.load(workdir / "feats.npy")
    # With an ample budget the router picks alpha where feature 0 is clearly positive, beta where negative.
    strong = np.abs(feats[:, 0]) > 1.0
    want = np.where(feats[:, 0] > 0, "alpha", "beta")
    assert (frame.model.to_numpy()[strong] == want[strong]).mean() >= 0.9
    # A budget that only affords beta: everything goes to beta.
    code = main(["p2l", "route", str(trained), str(workdir / "prompts.txt"), "--features", str(workdir / "feats.npy"),
                 "--costs", str(workdir / "costs.json"), "--budget", "0.1", "--out", str(workdir / "cheap.jsonl")])
    assert code == 0
    assert set(pd.read_json(workdir / "cheap.jsonl", lines=True).model) == {"beta"}


@pytest.mark.parametrize("args,message", [
    (["train", "VOTES", "--out", "NEW", "--prompts-column", "nope"], "missing column(s) 'nope'"),
    (["train", "VOTES", "--out", "MODEL", "--prompts-column", "question"], "--out"),
    (["train", "VOTES", "--out", "NEW", "--prompts-column", "question", "--features", "BAD"],
     "--features"),
    (["train", "VOTES", "--out", "NEW", "--prompts-column", "question", "--resume"], "--resume needs --checkpoint-dir"),
    (["leaderboard", "MODEL", "PROMPTS", "--features", "FEATS", "--bootstrap", "1"], "--bootstrap must be 0 or >= 2"),
    (["leaderboard", "VOTES", "PROMPTS"], "is not a directory"),
    (["route", "MODEL", "PROMPTS", "--features", "FEATS", "--costs", "BADCOSTS", "--budget", "1"],
     "has no cost for model(s) 'gamma'"),
    (["route", "MODEL", "PROMPTS", "--features", "FEATS", "--costs", "COSTS", "--budget", "0.01"],
     "is below the cheapest model's cost"),
    (["route", "MODEL", "PROMPTS", "--features", "FEATS5", "--costs", "COSTS", "--budget", "1"],
     "expected shape [P, D] with P = 30"),
    # JSON true is not a cost (float(True) == 1.0 was taken silently).
    (["route", "MODEL", "PROMPTS", "--features", "FEATS", "--costs", "BOOLCOSTS", "--budget", "1"],
     "every cost must be a number, got 'alpha': true"),
    (["leaderboard", "MODEL", "PROMPTS", "--features", "NANFEATS"], "nan.npy: contains NaN or infinite values"),
    # Training options are checked, and named by their flags, BEFORE the encoder runs (a missing encoder
    # here: the option's error must come first).
    (["train", "VOTES", "--out", "NEW", "--prompts-column", "question", "--encoder", "NOENC", "--patience", "0"],
     "--patience must be >= 1"),
    (["train", "VOTES", "--out", "NEW", "--prompts-column", "question", "--encoder", "NOENC", "--val-fraction", "1"],
     "--val-fraction must lie in [0, 1)"),
    (["train", "VOTES", "--out", "NEW", "--prompts-column", "question", "--encoder", "NOENC", "--checkpoint-dir",
      "FULLDIR"], "is not empty (checkpoints of an earlier run?); pass --resume"),
    (["train", "VOTES", "--out", "NEW", "--prompts-column", "question", "--encoder", "NOENC", "--checkpoint-dir",
      "NEWDIR", "--resume"], "holds no checkpoint"),
    (["train", "VOTES", "--out", "NEW", "--prompts-column", "question", "--encoder", "NOENC", "--delta-l2", "0.1,x"],
     "--delta-l2: expected comma-separated numbers or 'none'"),
    (["train", "VOTES", "--out", "NEW", "--prompts-column", "question", "--encoder", "NOENC", "--delta-l2", "-1"],
     "--delta-l2: strengths must be finite numbers >= 0"),
    (["train", "VOTES", "--out", "NEW", "--prompts-column", "question", "--encoder", "NOENC", "--val-fraction", "0",
      "--folds", "0"], "--val-fraction must be > 0"),
    (["train", "VOTES", "--out", "NEW", "--prompts-column", "question", "--encoder", "NOENC", "--folds", "1"],
     "--folds must be 0 or >= 2"),
    (["train", "VOTES", "--out", "NEW", "--prompts-column", "question", "--features", "FEATS", "--finetune",
      "last-k"], "--finetune trains the encoder itself"),
    (["train", "VOTES", "--out", "NEW", "--prompts-column", "question", "--encoder", "NOENC", "--finetune",
      "lora", "--batch-prompts", "6", "--accumulate", "4"], "--batch-prompts 6 must be a multiple of --accumulate 4"),
    (["train", "VOTES", "--out", "NEW", "--prompts-column", "question", "--encoder", "NOENC", "--finetune",
      "last-k", "--val-fraction", "0.001"], "--val-fraction 0.001 of 30 prompts leaves no validation"),
])
def test_errors_are_one_line(trained, workdir, capsys, args, message):
    (workdir / "badcosts.json").write_text(json.dumps({"alpha": 1.0, "beta": 0.1}))
    np.save(workdir / "feats5.npy", np.zeros((5, 4), np.float32))
    (workdir / "bad.npy").write_text("not numpy")
    (workdir / "boolcosts.json").write_text(json.dumps({"alpha": True, "beta": 0.1, "gamma": 0.5}))
    np.save(workdir / "nan.npy", np.full((30, 4), np.nan, np.float32))
    (workdir / "fulldir").mkdir(exist_ok=True)
    (workdir / "fulldir" / "0").write_text("an earlier run")
    subst = {"VOTES": workdir / "votes.csv", "NEW": workdir / "new_model", "MODEL": trained,
             "PROMPTS": workdir / "prompts.txt", "FEATS": workdir / "feats.npy", "FEATS5": workdir / "feats5.npy",
             "COSTS": workdir / "costs.json", "BADCOSTS": workdir / "badcosts.json", "BAD": workdir / "bad.npy",
             "BOOLCOSTS": workdir / "boolcosts.json", "NANFEATS": workdir / "nan.npy", "NOENC": workdir / "no_encoder",
             "FULLDIR": workdir / "fulldir", "NEWDIR": workdir / "new_ckpt"}
    code = main(["p2l"] + [str(subst.get(a, a)) for a in args])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("jaxrank: error:") and message in err and "\n" not in err, err


def test_help(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["p2l", "train", "--help"])
    assert exc.value.code == 0
    assert "--prompts-column" in capsys.readouterr().out


def test_end_to_end_with_the_real_sentence_encoder(minilm, workdir, tmp_path, capsys):
    # all-MiniLM-L6-v2 computes the features (few prompts, one short training run).
    code = main(["p2l", "train", str(workdir / "votes.csv"), "--prompts-column", "question", "--encoder",
                 "all-minilm-l6-v2", "--out", str(tmp_path / "m"), "--epochs", "2", "--val-fraction", "0.2",
                 "--cache-dir", str(tmp_path / "cache")])
    assert code == 0
    model = load_p2l(tmp_path / "m")
    assert model.encoder == "all-minilm-l6-v2" and model.config["in_features"] == 384
    code = main(["p2l", "leaderboard", str(tmp_path / "m"), str(workdir / "prompts.txt"), "--cache-dir",
                 str(tmp_path / "cache"), "--out", str(tmp_path / "lb.csv")])
    assert code == 0
    assert len(pd.read_csv(tmp_path / "lb.csv")) == 3
    # P2LModel.predict: the recorded encoder's features, then the head.
    from jaxrank.lm.features import prompt_features

    texts = ["prompt number 3", "prompt number 7"]
    beta, alpha = model.predict(texts)
    ref, _ = model.coefficients(prompt_features(texts, encoder="all-minilm-l6-v2"))
    assert beta.shape == (2, 3) and alpha is None
    np.testing.assert_array_equal(np.asarray(beta), np.asarray(ref))


def test_train_with_columns_and_winner_labels(workdir, capsys):
    """`p2l train --columns ... --winner-labels ...` (an ImportError of `_parse_map` before) reads other layouts."""
    frame = pd.read_csv(workdir / "votes.csv").rename(columns={"model_a": "first", "model_b": "second",
                                                               "winner": "verdict"})
    frame["verdict"] = frame["verdict"].map({"model_a": "1", "model_b": "2", "tie": "0"})
    frame.to_csv(workdir / "renamed.csv", index=False)
    out = workdir / "renamed_model"
    code = main(["p2l", "train", str(workdir / "renamed.csv"), "--columns", "model_a=first,model_b=second,winner=verdict",
                 "--winner-labels", "1=model_a,2=model_b,0=tie", "--prompts-column", "question",
                 "--features", str(workdir / "feats.npy"), "--out", str(out), "--epochs", "2"])
    assert code == 0, capsys.readouterr().err
    assert load_p2l(out).models == tuple(MODELS)
    capsys.readouterr()
    code = main(["p2l", "train", str(workdir / "renamed.csv"), "--columns", "model_a=first,model_b=second,winner=verdict",
                 "--prompts-column", "question", "--features", str(workdir / "feats.npy"), "--out",
                 str(workdir / "never")])
    err = capsys.readouterr().err
    assert code == 2 and "unknown winner label(s) '0'" in err and err.count("\n") == 1


def test_finetune_last_k_end_to_end(workdir, tmp_path, capsys):
    """`--finetune last-k` on a tiny random Llama checkpoint: trains, saves, and the saved model gives leaderboards."""
    import sys

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from test_cli_prioritize import _save_llama, _tokenizer

    from jaxrank.lm import load_model
    from jaxrank.p2l_finetune import load_p2l_finetune, tokenize_prompts

    lm_dir = _save_llama(tmp_path / "lm", _tokenizer(300), 0)
    code = main(["p2l", "train", str(workdir / "votes.csv"), "--prompts-column", "question", "--encoder", str(lm_dir),
                 "--out", str(tmp_path / "ft"), "--finetune", "last-k", "--k", "1", "--epochs", "2",
                 "--delta-l2", "0.01", "--batch-prompts", "8", "--lr", "0.01", "--max-length", "16"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "fine-tuned" in out and "last 1 blocks" in out
    fit = load_p2l_finetune(tmp_path / "ft", load_model(str(lm_dir)).model)
    assert fit.config["mode"] == "last-k" and fit.config["k"] == 1 and fit.history["epochs"] >= 1
    assert fit.config["max_length"] == 16 and fit.config["chat_template"] is True
    # New prompts are read as the training prompts were: without --max-length, the recorded 16 tokens.
    code = main(["p2l", "leaderboard", str(tmp_path / "ft"), str(workdir / "prompts.txt"), "--out",
                 str(tmp_path / "lb.csv")])
    err = capsys.readouterr().err
    assert code == 0 and "was trained on" not in err, err
    frame = pd.read_csv(tmp_path / "lb.csv")
    assert sorted(frame.model) == sorted(MODELS) and np.isfinite(frame.rating).all()
    code = main(["p2l", "leaderboard", str(tmp_path / "ft"), str(workdir / "prompts.txt"), "--max-length", "16",
                 "--out", str(tmp_path / "lb16.csv")])
    err = capsys.readouterr().err
    assert code == 0 and "was trained on" not in err and err.count("were truncated") == 1, err
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "lb16.csv"), frame)
    loaded = load_model(str(lm_dir))
    prompts = (workdir / "prompts.txt").read_text().splitlines()
    beta, _ = fit.predict(loaded, prompts)
    ids, mask = tokenize_prompts(loaded, prompts, max_length=16)
    np.testing.assert_array_equal(np.asarray(beta), np.asarray(fit.coefficients(loaded.model, ids, mask)[0]))
    code = main(["p2l", "leaderboard", str(tmp_path / "ft"), str(workdir / "prompts.txt"), "--max-length", "8"])
    assert code == 0
    assert "was trained on prompts read with --max-length 16; --max-length 8 reads" in capsys.readouterr().err
    # --k beyond the model's blocks: refused once the model's config is read, before any tokenizing or training.
    code = main(["p2l", "train", str(workdir / "votes.csv"), "--prompts-column", "question", "--encoder", str(lm_dir),
                 "--out", str(tmp_path / "ft99"), "--finetune", "last-k", "--k", "99"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("jaxrank: error: --k 99: --encoder") and "blocks" in err, err
    assert not (tmp_path / "ft99").exists()
