"""The vote table: `Votes` validation and encoding, graph components, synthetic arenas, and every reader
(each layout, written by the test, against the same votes in Arena CSV), with the bad-input errors."""

import gzip
import json
import warnings

import jax
import numpy as np
import pandas as pd
import pytest

from jaxrank import Votes, load_votes
from jaxrank.ratings import fit_bradley_terry, synthetic_votes
from jaxrank.votes import (
    A_WINS,
    B_WINS,
    OUTCOME_NAMES,
    TIE,
    TIE_BOTHBAD,
    comparison_components,
    detect_format,
    read_table,
)


@pytest.fixture(scope="module")
def llmfao_frame(shared_data):
    return pd.read_csv(shared_data / "llmfao" / "crowd-comparisons.csv")


@pytest.fixture()
def arena_frame():
    return pd.DataFrame(
        {
            "model_a": ["x", "y", "x", "z", "x", "y", "z"],
            "model_b": ["y", "z", "y", "x", "y", "x", "y"],
            "winner": ["model_a", "tie", "model_a", "model_b", "tie (bothbad)", "model_b", "model_a"],
        }
    )


def _decode(votes: Votes):
    """Vote-level (model_a, model_b, winner) triples."""
    names = np.asarray(votes.models, dtype=object)
    return names[votes.a], names[votes.b], np.asarray(OUTCOME_NAMES, dtype=object)[votes.outcome]


# --------------------------------------------------------------------------------------------------
# The table and its encoding


def test_llmfao_encoding_round_trips(shared_data, llmfao_frame):
    votes = load_votes(shared_data / "llmfao" / "crowd-comparisons.csv")
    df = llmfao_frame
    assert votes.num_models == 59 == len(set(df.left) | set(df.right))
    assert votes.num_votes == len(df)
    assert votes.models == tuple(sorted(set(df.left) | set(df.right)))
    a, b, w = _decode(votes)
    np.testing.assert_array_equal(a, df.left.to_numpy())
    np.testing.assert_array_equal(b, df.right.to_numpy())
    expected = df.winner.map({"left": "model_a", "right": "model_b", "tie": "tie"}).to_numpy()
    np.testing.assert_array_equal(w, expected)
    # LLMFAO's prompt and worker columns: the prompts and the judges.
    assert votes.num_prompts == 13 and len(votes.judge_ids) == df.worker.nunique()
    np.testing.assert_array_equal(np.asarray(votes.prompt_ids)[votes.prompt], df.prompt.astype(str))
    # Unique rows are unique, counts are the multiplicities.
    rows = votes.rows()
    keys = (np.asarray(rows.a) * 59 + np.asarray(rows.b)) * 4 + np.asarray(rows.outcome)
    assert np.unique(keys).size == rows.num_rows < len(df)
    np.testing.assert_array_equal(np.asarray(rows.count), np.bincount(np.asarray(rows.vote_row)[:, 0]))
    counts = votes.outcome_counts()
    assert counts["model_a"] == (df.winner == "left").sum() and counts["tie"] == (df.winner == "tie").sum()
    per_model = votes.battles_per_model()
    assert per_model.sum() == 2 * len(df)
    assert per_model[votes.models.index("GPT 4")] == ((df.left == "GPT 4") | (df.right == "GPT 4")).sum()
    assert votes.a.dtype == np.int32 and rows.count.dtype == np.float32 and rows.vote_row.dtype == np.int32


def test_file_formats_agree(tmp_path, arena_frame):
    arena_frame.to_csv(tmp_path / "v.csv", index=False)
    arena_frame.to_csv(tmp_path / "v.tsv", index=False, sep="\t")
    arena_frame.to_json(tmp_path / "v.jsonl", orient="records", lines=True)
    arena_frame.to_json(tmp_path / "v.json", orient="records")
    arena_frame.to_parquet(tmp_path / "v.parquet")
    with gzip.open(tmp_path / "v.csv.gz", "wt") as f:
        arena_frame.to_csv(f, index=False)
    ref = load_votes(arena_frame)
    for name in ("v.csv", "v.tsv", "v.jsonl", "v.json", "v.parquet", "v.csv.gz"):
        got = load_votes(tmp_path / name)
        assert got.models == ref.models, name
        for field in ("a", "b", "outcome"):
            np.testing.assert_array_equal(getattr(got, field), getattr(ref, field))
        for field in ("a", "b", "outcome", "count", "vote_row"):
            np.testing.assert_array_equal(getattr(got.rows(), field), getattr(ref.rows(), field))
    a, b, w = _decode(ref)
    np.testing.assert_array_equal(w, np.where(arena_frame.winner == "tie (bothbad)", "tie (bothbad)", arena_frame.winner))
    assert ref.outcome_counts()["tie (bothbad)"] == 1
    # both_bad (arena-human-preference-140k) is the same outcome as tie (bothbad).
    assert load_votes(arena_frame.replace({"winner": {"tie (bothbad)": "both_bad"}})).outcome.tolist() == ref.outcome.tolist()
    # to_frame reads back to the same votes.
    back = load_votes(ref.to_frame())
    assert back.models == ref.models and back.outcome.tolist() == ref.outcome.tolist()


def test_weights_models_and_column_mapping(arena_frame):
    df = arena_frame.rename(columns={"model_a": "left", "model_b": "right", "winner": "verdict"})
    df["w"] = np.arange(1.0, 8.0)
    columns = {"model_a": "left", "model_b": "right", "winner": "verdict", "weight": "w"}
    votes = load_votes(df, columns=columns, models=["z", "y", "x", "unplayed"])
    rows = votes.rows()
    assert votes.models == ("z", "y", "x", "unplayed")
    assert float(np.asarray(rows.count).sum()) == df.w.sum()
    # The two x-beats-y votes (weights 1 and 3) share one row.
    x, y = votes.models.index("x"), votes.models.index("y")
    sel = (np.asarray(rows.a) == x) & (np.asarray(rows.b) == y) & (np.asarray(rows.outcome) == A_WINS)
    assert np.asarray(rows.count)[sel].tolist() == [4.0]
    np.testing.assert_array_equal(votes.battles_per_model()[3], 0.0)
    # Other weights: replaced (validated again), or another column.
    arr = votes.replace(weight=np.ones(7))
    assert float(np.asarray(arr.rows().count).sum()) == 7.0
    by_name = load_votes(df.drop(columns="w").assign(k=2.0), columns={**columns, "weight": "k"})
    assert float(np.asarray(by_name.rows().count).sum()) == 14.0


def test_rows_are_a_pytree(arena_frame):
    votes = load_votes(arena_frame)
    rows = votes.rows()
    leaves, treedef = jax.tree.flatten(rows)
    assert len(leaves) == 8
    doubled = jax.jit(lambda r: r.with_counts(r.count * 2))(rows)
    assert doubled.models == rows.models
    np.testing.assert_array_equal(doubled.count, 2 * np.asarray(rows.count))
    frame = rows.to_frame()
    assert list(frame.columns) == ["model_a", "model_b", "winner", "count"] and frame["count"].sum() == 7
    assert votes.rows() is rows  # encoded once


def test_soft_votes_split_into_two_rows():
    votes = Votes.from_arrays(["x", "x", "y", "x"], ["y", "y", "x", "y"], p_a=[0.8, 1.0, 0.5, 0.3],
                              weight=[1.0, 2.0, 1.0, 4.0])
    assert votes.outcome.tolist() == [A_WINS, A_WINS, TIE, B_WINS]
    rows = votes.rows()
    table = {(int(a), int(b), int(o)): float(c) for a, b, o, c in zip(rows.a, rows.b, rows.outcome, rows.count)}
    # x-y: a wins 0.8 + 2 * 1 + 4 * 0.3, b wins 0.2 + 4 * 0.7; y-x: a tie of weight 1.
    assert table == pytest.approx({(0, 1, 0): 4.0, (0, 1, 1): 3.0, (1, 0, 2): 1.0})
    np.testing.assert_allclose(votes.score_a(), [0.8, 1.0, 0.5, 0.3])
    per_vote = votes.rows(merge=False)
    assert per_vote.num_rows == 6 and np.asarray(per_vote.row_vote).tolist() == [0, 0, 1, 2, 3, 3]
    with pytest.raises(ValueError, match="outcome must be the hard label of p_a"):
        Votes(models=("x", "y"), a=[0], b=[1], outcome=[B_WINS], p_a=[0.9])
    with pytest.raises(ValueError, match=r"p_a \(P\(a wins\)\) must lie in \[0, 1\]"):
        Votes.from_arrays(["x"], ["y"], p_a=[1.2])


def test_subsets_keep_the_tables():
    votes = Votes.from_arrays(["x", "y", "x", "z"], ["y", "z", "z", "x"], ["model_a", "tie", "model_b", "tie"],
                              prompt=["p1", "p2", "p1", "p3"], judge=["h", "h", "g", "g"],
                              meta={"turn": [1, 1, 2, 1]})
    sub = votes.subset(np.array([True, False, True, False]))
    assert len(sub) == 2 and sub.prompt_ids == votes.prompt_ids and sub.meta["turn"].tolist() == [1, 2]
    assert votes.subset([3, 0]).a.tolist() == [votes.a[3], votes.a[0]]
    assert votes.subset_prompts(["p1"]).num_votes == 2 and votes.subset_prompts([1]).num_votes == 1
    dropped = votes.subset_prompts(["p3"]).drop_empty_prompts()
    assert dropped.prompt_ids == ("p3",) and dropped.prompt.tolist() == [0]
    with pytest.raises(ValueError, match=r"prompt id\(s\) 'p9' are not among the 3 prompts"):
        votes.subset_prompts(["p9"])
    with pytest.raises(ValueError, match="boolean selection must have shape"):
        votes.subset(np.array([True]))
    assert votes.a.flags.writeable is False  # validated once: the table cannot change under a fit


def test_bad_input_errors(tmp_path, arena_frame):
    with pytest.raises(ValueError, match=r"unknown winner label\(s\) 'draw' \(2 votes\).*'model_a'"):
        load_votes(arena_frame.assign(winner=["draw", "draw"] + arena_frame.winner.tolist()[2:]))
    with pytest.raises(ValueError, match=r"model playing itself.*row 1 \('y'\)"):
        load_votes(arena_frame.assign(model_b=["y", "y"] + arena_frame.model_b.tolist()[2:]))
    with pytest.raises(ValueError, match=r"missing column\(s\) 'winner'.*available columns: 'model_a', 'model_b', 'verdict'"):
        load_votes(arena_frame.rename(columns={"winner": "verdict"}))
    with pytest.raises(ValueError, match="no votes"):
        load_votes(arena_frame.iloc[:0])
    with pytest.raises(ValueError, match=r"weight must be >= 0; 1 negative"):
        load_votes(arena_frame).replace(weight=[1, 1, -1, 1, 1, 1, 1])
    with pytest.raises(ValueError, match="weight has 1 NaN"):
        load_votes(arena_frame).replace(weight=[1, 1, np.nan, 1, 1, 1, 1])
    with pytest.raises(ValueError, match=r"weight must have shape \[7\]"):
        load_votes(arena_frame).replace(weight=[1.0, 2.0])
    with pytest.raises(ValueError, match=r"column 'model_a', row 0: 1 missing or empty value"):
        load_votes(arena_frame.assign(model_a=[None] + arena_frame.model_a.tolist()[1:]))
    with pytest.raises(ValueError, match=r"models does not list 1 model\(s\) found in the votes: 'z'"):
        load_votes(arena_frame, models=["x", "y"])
    with pytest.raises(ValueError, match="duplicate"):
        load_votes(arena_frame, models=["x", "y", "z", "x"])
    with pytest.raises(ValueError, match=r"winner_labels\['left'\] = 'a'"):
        load_votes(arena_frame, winner_labels={"left": "a"})
    with pytest.raises(ValueError, match="unknown key"):
        load_votes(arena_frame, columns={"model_x": "a"})
    with pytest.raises(ValueError, match="unknown file type '.xlsx'"):
        (tmp_path / "v.xlsx").write_text("x")
        load_votes(tmp_path / "v.xlsx")
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_votes(tmp_path / "absent.csv")
    with pytest.raises(TypeError, match="source must be a pandas DataFrame or a path"):
        load_votes([("x", "y", "model_a")])
    with pytest.raises(ValueError, match="format must be 'auto' or one of"):
        load_votes(arena_frame, format="chess")


def test_components():
    votes = Votes.from_arrays(
        ["a", "b", "c", "d", "e"], ["b", "a", "d", "e", "c"], ["model_a", "tie", "model_b", "model_a", "tie"],
        models=["a", "b", "c", "d", "e", "lonely"],
    )
    comp = comparison_components(votes)
    np.testing.assert_array_equal(comp, [0, 0, 1, 1, 1, 2])
    # Zero weight removes an edge.
    rows = votes.rows()
    w = np.asarray(rows.count).copy()
    d, e = 3, 4
    w[(np.asarray(rows.a) == d) & (np.asarray(rows.b) == e)] = 0.0
    np.testing.assert_array_equal(comparison_components(rows, weights=w), [0, 0, 1, 1, 1, 2])
    w[(np.asarray(rows.a) == 4) & (np.asarray(rows.b) == 2)] = 0.0
    np.testing.assert_array_equal(comparison_components(rows, weights=w), [0, 0, 1, 1, 2, 3])


def test_components_long_chain():
    # A path graph needs many propagation rounds; pointer jumping must still give one component.
    n = 300
    names = [f"m{i}" for i in range(n)]
    votes = Votes.from_arrays(names[1:][::-1], names[:-1][::-1], ["model_a"] * (n - 1), models=names)
    assert comparison_components(votes).max() == 0


@pytest.mark.parametrize("ties", ["half", "rao-kupper"])
def test_synthetic_votes_counts(ties):
    votes, theta = synthetic_votes(
        jax.random.key(3), 7, 12_345, ties=ties, tie_param=0.8 if ties == "rao-kupper" else None,
        tie_bothbad_fraction=0.25,
    )
    rows = votes.rows()
    assert votes.num_models == 7 and theta.shape == (7,)
    assert votes.count is not None and votes.num_votes == 12_345
    assert float(np.asarray(rows.count, np.float64).sum()) == 12_345
    assert np.all(np.asarray(rows.count) > 0)
    assert np.all(np.asarray(rows.a) != np.asarray(rows.b))
    keys = (np.asarray(rows.a) * 7 + np.asarray(rows.b)) * 4 + np.asarray(rows.outcome)
    assert np.unique(keys).size == rows.num_rows
    counts = votes.outcome_counts()
    if ties == "half":
        assert counts["tie"] == counts["tie (bothbad)"] == 0
    else:
        total_ties = counts["tie"] + counts["tie (bothbad)"]
        # ~N(p n, p(1-p) n) with p = 0.25: a 6-sigma band.
        sd = np.sqrt(0.25 * 0.75 * total_ties)
        assert abs(counts["tie (bothbad)"] - 0.25 * total_ties) < 6 * sd
    # Uniform match-making: every unordered pair near N / 21 votes (multinomial, 6-sigma band).
    a, b, c = (np.asarray(x) for x in (rows.a, rows.b, rows.count))
    pair = np.minimum(a, b) * 7 + np.maximum(a, b)
    per_pair = np.bincount(pair, weights=c)[np.unique(pair)]
    assert per_pair.size == 21
    p = 1 / 21
    assert np.all(np.abs(per_pair - 12_345 * p) < 6 * np.sqrt(12_345 * p * (1 - p)))


def test_synthetic_bad_args():
    with pytest.raises(ValueError, match="num_models must be >= 2"):
        synthetic_votes(jax.random.key(0), 1, 10)
    with pytest.raises(ValueError, match="ties must be one of"):
        synthetic_votes(jax.random.key(0), 3, 10, ties="glicko")
    with pytest.raises(ValueError, match="tie_param must be > 0"):
        synthetic_votes(jax.random.key(0), 3, 10, ties="davidson", tie_param=-1.0)
    with pytest.raises(ValueError, match=r"theta must have shape \[num_models\]"):
        synthetic_votes(jax.random.key(0), 3, 10, theta=np.zeros(4))


def test_outcome_codes():
    assert (A_WINS, B_WINS, TIE, TIE_BOTHBAD) == (0, 1, 2, 3)
    assert OUTCOME_NAMES == ("model_a", "model_b", "tie", "tie (bothbad)")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Votes.from_arrays(["a"], ["b"], ["model_a"])


# --------------------------------------------------------------------------------------------------
# Every reader gives the same votes (and ratings) as the same votes in Arena CSV


MODELS = ["m-007", "alpha", "beta", "7", "007"]  # names that look like numbers stay distinct strings


@pytest.fixture(scope="module")
def base():
    """40 items (prompts) x 3 judges: one vote each, with both-bad votes, soft probabilities and lengths."""
    rng = np.random.default_rng(12)
    strength = np.array([0.9, 0.4, 0.0, -0.3, -0.8])
    rows = []
    for item in range(40):
        i, j = rng.choice(5, 2, replace=False)
        len_a, len_b = rng.integers(50, 2000, 2)
        for judge in ("annotator1", "annotator2", "annotator3"):
            d = strength[i] - strength[j] + 0.5 * (len_a - len_b) / (len_a + len_b)
            p = 1 / (1 + np.exp(-d))
            u = rng.random()
            winner = "tie" if u < 0.12 else "tie (bothbad)" if u < 0.18 else "model_a" if rng.random() < p else "model_b"
            rows.append({"question_id": f"{item:03d}", "model_a": MODELS[i], "model_b": MODELS[j], "winner": winner,
                         "judge": judge, "turn": 1 + item % 2, "len_a": int(len_a), "len_b": int(len_b),
                         "p": float(np.clip(p + rng.normal(0, 0.2), 0.01, 0.99))})
    return pd.DataFrame(rows)


def _arena_csv(frame, path, *, soft=False):
    out = frame[["question_id", "model_a", "model_b", "winner", "judge", "turn"]].copy()
    out["length_a"], out["length_b"] = frame["len_a"], frame["len_b"]
    if soft:
        out["p_a"] = frame["p"]
        out["winner"] = np.where(frame["p"] > 0.5, "model_a", np.where(frame["p"] < 0.5, "model_b", "tie"))
    out.to_csv(path, index=False)
    return load_votes(path)


def _same_votes(got: Votes, ref: Votes, *, prompts=True, judges=True, features=True):
    assert got.models == ref.models
    for field in ("a", "b", "outcome"):
        np.testing.assert_array_equal(getattr(got, field), getattr(ref, field), err_msg=field)
    if ref.p_a is not None:
        np.testing.assert_allclose(got.p_a, ref.p_a, rtol=0, atol=1e-12)
    if prompts:
        np.testing.assert_array_equal(np.asarray(got.prompt_ids)[got.prompt], np.asarray(ref.prompt_ids)[ref.prompt])
    if judges:
        np.testing.assert_array_equal(np.asarray(got.judge_ids)[got.judge], np.asarray(ref.judge_ids)[ref.judge])
    if features:
        np.testing.assert_array_equal(got.feature("length")[0], ref.feature("length")[0])
        np.testing.assert_array_equal(got.feature("length")[1], ref.feature("length")[1])


def _same_ratings(got: Votes, ref: Votes, **fit):
    r1 = np.asarray(fit_bradley_terry(got, **fit).ratings, np.float64)
    r2 = np.asarray(fit_bradley_terry(ref, **fit).ratings, np.float64)
    np.testing.assert_allclose(r1, r2, rtol=0, atol=1e-9)


def test_arena_parquet_with_conv_metadata(base, tmp_path):
    """arena-human-preference-100k/140k: Parquet, conv_metadata dicts (style counts as dicts), language."""
    ref = _arena_csv(base, tmp_path / "ref.csv")
    frame = base[["question_id", "model_a", "model_b", "winner", "judge", "turn"]].copy()
    frame["winner"] = frame["winner"].replace({"tie (bothbad)": "both_bad"})  # the 140k spelling
    frame["conv_metadata"] = [
        {"sum_user_tokens": 10, "sum_assistant_a_tokens": int(r.len_a), "sum_assistant_b_tokens": int(r.len_b),
         "header_count_a": {"h1": k % 3, "h2": 1}, "header_count_b": {"h1": 0, "h2": k % 2},
         "list_count_a": {"ordered": 1, "unordered": k % 4}, "list_count_b": {"ordered": 0, "unordered": 2},
         "bold_count_a": {"**": k % 5, "__": 0}, "bold_count_b": {"**": 1, "__": 0}}
        for k, r in enumerate(base.itertuples())]
    frame["language"] = ["English", "German"] * (len(frame) // 2)
    frame["conversation_a"] = [[{"role": "user", "content": f"question {q}"}, {"role": "assistant", "content": "x"}]
                               for q in base.question_id]
    frame.to_parquet(tmp_path / "arena.parquet")
    got = load_votes(tmp_path / "arena.parquet")
    assert detect_format(frame.columns) == "arena"
    _same_votes(got, ref)
    assert set(got.feature_names) == {"length", "headers", "lists", "bold"}
    assert got.feature("headers")[0][:3].tolist() == [1.0, 2.0, 3.0]  # h1 + h2 summed
    assert got.meta["language"][:2].tolist() == ["English", "German"] and "turn" in got.meta
    assert got.prompt_text[0] == "question 000"
    _same_ratings(got, ref)


def test_arena_55k_one_hot(base, tmp_path):
    decisive = base[base.winner != "tie (bothbad)"].reset_index(drop=True)
    ref = _arena_csv(decisive, tmp_path / "ref.csv")
    kaggle = pd.DataFrame({
        "id": np.arange(len(decisive)), "model_a": decisive.model_a, "model_b": decisive.model_b,
        "prompt": [json.dumps([f"question {q}"]) for q in decisive.question_id],
        "response_a": [json.dumps(["a" * n]) for n in decisive.len_a],
        "response_b": [json.dumps(["b" * (n - 10), "b" * 10]) for n in decisive.len_b],
        "winner_model_a": (decisive.winner == "model_a").astype(int),
        "winner_model_b": (decisive.winner == "model_b").astype(int),
        "winner_tie": (decisive.winner == "tie").astype(int),
    })
    kaggle.to_csv(tmp_path / "train.csv", index=False)
    got = load_votes(tmp_path / "train.csv")
    _same_votes(got, ref, prompts=False, judges=False)
    assert got.prompt_text[got.prompt[0]] == "question 000"
    _same_ratings(got, ref)
    # A row with two 1s is an error naming the file, the column and the line.
    bad = kaggle.copy()
    bad.loc[4, "winner_tie"] = 1 - bad.loc[4, "winner_tie"] if bad.loc[4, "winner_model_a"] == 0 else 1
    bad.loc[4, ["winner_model_a", "winner_model_b", "winner_tie"]] = [1, 0, 1]
    bad.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(ValueError, match=r"bad.csv: column 'winner_model_a', line 6: 1 row\(s\) .* have two 1s"):
        load_votes(tmp_path / "bad.csv")


def test_fastchat_clean_battle_json(base, tmp_path):
    ref = _arena_csv(base, tmp_path / "ref.csv")
    records = [{"model_a": r.model_a, "model_b": r.model_b, "winner": r.winner, "judge": r.judge, "turn": r.turn,
                "anony": True, "language": "English", "tstamp": 1.7e9 + k, "question_id": r.question_id,
                "length_a": r.len_a, "length_b": r.len_b}
               for k, r in enumerate(base.itertuples())]
    (tmp_path / "clean_battle.json").write_text(json.dumps(records, indent=1))
    got = load_votes(tmp_path / "clean_battle.json")
    assert len(got) == len(base)  # a JSON list of records, not "400 columns"
    _same_votes(got, ref)
    assert got.meta["anony"].tolist() == [True] * len(base)
    _same_ratings(got, ref)


def test_mt_bench_human_judgments_jsonl(base, tmp_path):
    ref = _arena_csv(base, tmp_path / "ref.csv")
    with open(tmp_path / "human.jsonl", "w") as f:
        for r in base.itertuples():
            f.write(json.dumps({"question_id": int(r.question_id), "model_a": r.model_a, "model_b": r.model_b,
                                "winner": r.winner, "judge": r.judge, "turn": r.turn,
                                "conversation_a": [{"role": "user", "content": "q"}, {"role": "assistant",
                                                                                     "content": "x" * r.len_a}],
                                "conversation_b": [{"role": "user", "content": "q"}, {"role": "assistant",
                                                                                     "content": "y" * r.len_b}]}) + "\n")
    got = load_votes(tmp_path / "human.jsonl")
    # JSON integers are ids as written: 7 is "7", not "007".
    assert got.prompt_ids[:2] == ("0", "1")
    _same_votes(got, ref, prompts=False)
    np.testing.assert_array_equal(np.asarray(got.prompt_ids, dtype=object)[got.prompt].astype(int),
                                  base.question_id.astype(int))
    _same_ratings(got, ref)


def test_alpaca_eval_soft_preferences(base, tmp_path):
    ref = _arena_csv(base, tmp_path / "ref.csv", soft=True)
    annotations = [{"instruction": f"question {r.question_id}", "instruction_idx": r.question_id,
                    "generator_1": r.model_a, "generator_2": r.model_b, "preference": 2.0 - r.p,
                    "annotator": r.judge, "len_output_1": r.len_a, "len_output_2": r.len_b, "dataset": "helpful_base"}
                   for r in base.itertuples()]
    (tmp_path / "annotations.json").write_text(json.dumps(annotations))
    got = load_votes(tmp_path / "annotations.json")
    assert got.is_soft and got.meta["dataset"][0] == "helpful_base"
    _same_votes(got, ref)
    _same_ratings(got, ref)
    _same_ratings(got, ref, style=("length",))
    with pytest.raises(ValueError, match=r"annotations2.json: column 'preference', record 3: 1 preference\(s\) outside \[1, 2\]"):
        annotations[3]["preference"] = 2.5
        (tmp_path / "annotations2.json").write_text(json.dumps(annotations))
        load_votes(tmp_path / "annotations2.json")


def test_llmfao_layout(base, tmp_path):
    no_bothbad = base.replace({"winner": {"tie (bothbad)": "tie"}})
    ref = _arena_csv(no_bothbad, tmp_path / "ref.csv")
    frame = pd.DataFrame({"id": np.arange(len(base)), "prompt": no_bothbad.question_id, "model_x": 0, "model_y": 1,
                          "worker": no_bothbad.judge, "winner": no_bothbad.winner.map(
                              {"model_a": "left", "model_b": "right", "tie": "tie"}),
                          "left": no_bothbad.model_a, "right": no_bothbad.model_b,
                          "length_a": no_bothbad.len_a, "length_b": no_bothbad.len_b})
    frame.to_csv(tmp_path / "llmfao.csv", index=False)
    got = load_votes(tmp_path / "llmfao.csv")
    _same_votes(got, ref)
    _same_ratings(got, ref, ties="davidson")


def test_pandalm_testset(base, tmp_path):
    items = []
    by_item = base.groupby("question_id", sort=False)
    code = {"model_a": 1, "model_b": 2, "tie": 0}
    safe = base.replace({"winner": {"tie (bothbad)": "tie"}}).assign(
        model_a=lambda d: d.model_a.str.replace("-", ""), model_b=lambda d: d.model_b.str.replace("-", ""))
    for qid, group in safe.groupby("question_id", sort=False):
        r = group.iloc[0]
        items.append({"idx": int(qid), "cmp_key": f"{r.model_a}_{r.model_b}", "instruction": f"question {qid}",
                      "input": "", "response1": "a" * int(r.len_a), "response2": "b" * int(r.len_b),
                      **{j: code[w] for j, w in zip(group.judge, group.winner)}})
    del by_item
    (tmp_path / "testset.json").write_text(json.dumps(items))
    ref = _arena_csv(safe.assign(question_id=safe.question_id.astype(int).astype(str)), tmp_path / "ref.csv")
    got = load_votes(tmp_path / "testset.json")
    _same_votes(got, ref)
    assert got.prompt_text[0] == "question 000"
    _same_ratings(got, ref)


# --------------------------------------------------------------------------------------------------
# Reading: names as written, located errors


def test_names_and_ids_are_strings_as_written(tmp_path):
    (tmp_path / "v.csv").write_text("model_a,model_b,winner,prompt_id\n007,7,model_a,01\n2,2.0,model_b,1\n"
                                    "7,2,tie,1.0\n")
    votes = load_votes(tmp_path / "v.csv")
    assert votes.models == ("007", "2", "2.0", "7")
    assert votes.prompt_ids == ("01", "1", "1.0")
    (tmp_path / "v.jsonl").write_text('{"model_a": 7, "model_b": 7.0, "winner": "tie"}\n'
                                      '{"model_a": "007", "model_b": 7, "winner": "model_a"}\n')
    assert load_votes(tmp_path / "v.jsonl").models == ("007", "7", "7.0")
    (tmp_path / "empty_name.csv").write_text("model_a,model_b,winner\nx,y,model_a\n,y,tie\n")
    with pytest.raises(ValueError, match=r"empty_name.csv: column 'model_a', line 3: 1 missing or empty value"):
        load_votes(tmp_path / "empty_name.csv")


def test_reader_errors_name_file_column_and_line(tmp_path):
    (tmp_path / "latin1.csv").write_bytes("model_a,model_b,winner\nx,y,model_a\ncaf\xe9,y,tie\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1.csv: not UTF-8 text: byte 0xe9 at line 3, column 4"):
        load_votes(tmp_path / "latin1.csv")
    (tmp_path / "bad.jsonl").write_text('{"model_a": "x", "model_b": "y", "winner": "tie"}\n\n{"model_a": "x",\n')
    with pytest.raises(ValueError, match=r"bad.jsonl: line 3 is not valid JSON"):
        load_votes(tmp_path / "bad.jsonl")
    (tmp_path / "object.json").write_text(json.dumps({"model_a": ["x"], "model_b": ["y"], "winner": ["tie"]}))
    with pytest.raises(ValueError, match=r"object.json: a JSON object, not a list of records"):
        load_votes(tmp_path / "object.json")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ValueError, match=r"empty.csv is empty"):
        load_votes(tmp_path / "empty.csv")
    (tmp_path / "header.csv").write_text("model_a,model_b,winner\n")
    with pytest.raises(ValueError, match=r"header.csv has no votes"):
        load_votes(tmp_path / "header.csv")
    (tmp_path / "labels.csv").write_text("model_a,model_b,winner\nx,y,draw\nx,y,model_a\ny,x,draw\nx,y,lost\n")
    with pytest.raises(ValueError, match=r"labels.csv: column 'winner' has unknown winner label\(s\) 'draw' \(2 votes\) "
                                         r"in lines 2, 4; 'lost' \(1 vote\) in line 5; accepted: 'model_a'"):
        load_votes(tmp_path / "labels.csv")
    (tmp_path / "prompt.csv").write_text("model_a,model_b,winner,prompt\nx,y,model_a,hello\nx,y,tie,\n")
    with pytest.raises(ValueError, match=r"prompt.csv: column 'prompt', line 3: 1 empty prompt"):
        load_votes(tmp_path / "prompt.csv")
    (tmp_path / "soft.csv").write_text("model_a,model_b,winner,p_a\nx,y,model_a,0.7\nx,y,model_a,1.3\n")
    with pytest.raises(ValueError, match=r"soft.csv: column 'p_a', line 3: 1 soft outcome\(s\) outside \[0, 1\]"):
        load_votes(tmp_path / "soft.csv")
    (tmp_path / "nan.csv").write_text("model_a,model_b,winner,length_a,length_b\nx,y,model_a,10,20\nx,y,tie,nan,3\n")
    with pytest.raises(ValueError, match=r"nan.csv: column 'length_a', line 3: 1 NaN/infinite value"):
        load_votes(tmp_path / "nan.csv", features={"length": ("length_a", "length_b")})
    # Quoted cells spanning lines: the line number is still the record's.
    (tmp_path / "multi.csv").write_text('model_a,model_b,winner,prompt\nx,y,model_a,"two\nlines"\nx,,tie,p\n')
    with pytest.raises(ValueError, match=r"multi.csv: column 'model_b', line 4: 1 missing"):
        load_votes(tmp_path / "multi.csv")
    assert read_table(tmp_path / "multi.csv").frame.shape == (2, 4)
