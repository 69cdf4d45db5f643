"""The LLMFAO numbers quoted in docs/ratings.md, recomputed (crowd-comparisons.csv, ties as in the text).

- the tie parameters of the Rao-Kupper (alpha) and Davidson (nu) fits;
- agreement with evalica's golden Bradley-Terry scores: max |theta - (log score - mean log score)|;
- P(GPT 4 beats Claude v2) under the `half` fit;
- the most influential vote row for GPT 4's rating (gradient of the rating w.r.t. the row weights);
- sandwich standard errors vs a 1,000-round bootstrap's (median and range of the ratio);
- online Elo over 1,000 random vote orders: median 95 % spread, and the median spread of the 10 least-played models.

Usage: PYTHONPATH=$PWD python scripts/ratings_llmfao_numbers.py
"""

from __future__ import annotations

import pathlib
import sys

import numpy as np
import pandas as pd

DATA = pathlib.Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "llmfao"


def main() -> int:
    import jax

    from jaxrank import load_votes
    from jaxrank.ratings import bootstrap_ratings, elo_permutations, fit_bradley_terry, sandwich_intervals

    battles = load_votes(DATA / "crowd-comparisons.csv")
    rows = battles.rows()
    models = list(battles.models)
    fit = fit_bradley_terry(battles, ties="half")
    rk = fit_bradley_terry(battles, ties="rao-kupper")
    dv = fit_bradley_terry(battles, ties="davidson")
    print(f"tie parameters: rao-kupper alpha = {float(rk.tie_param):.3f}, davidson nu = {float(dv.tie_param):.3f}")

    golden = pd.read_csv(DATA / "evalica_llmfao-golden.csv")
    bt = golden[golden["algorithm"] == "bradley_terry"].set_index("item")["score"].reindex(models)
    log_score = np.log(bt.to_numpy(np.float64))
    ref = log_score - log_score.mean()
    theta = np.asarray(fit.theta, np.float64)
    order_same = bool((np.argsort(-theta) == np.argsort(-ref)).all())
    print(f"evalica bradley_terry: max |theta - (log score - mean)| = {np.max(np.abs(theta - ref)):.2g} "
          f"({np.max(np.abs(theta - ref)) * 400 / np.log(10):.2g} Elo); same ordering: {order_same}")

    p = fit.win_probability()
    print(f"P(GPT 4 beats Claude v2) = {float(p[models.index('GPT 4'), models.index('Claude v2')]):.3f}")

    gpt4 = models.index("GPT 4")
    grad = np.asarray(jax.grad(lambda w: fit_bradley_terry(battles, row_weights=w).ratings[gpt4])(rows.count))
    u = int(np.argmax(np.abs(grad)))
    a, b, o = models[int(rows.a[u])], models[int(rows.b[u])], int(rows.outcome[u])
    what = {0: f"{a} beat {b}", 1: f"{b} beat {a}", 2: f"{a} tied {b}", 3: f"{a} tied {b} (both bad)"}[o]
    print(f"most influential row for GPT 4: '{what}' ({int(rows.count[u])} vote(s)), {grad[u]:.2f} Elo per vote")

    boot = bootstrap_ratings(jax.random.key(0), battles, num_rounds=1000, fit=fit)
    sw = sandwich_intervals(battles, fit)
    ratio = np.asarray(sw.std_error, np.float64) / np.asarray(boot.std_error, np.float64)
    print(f"sandwich / bootstrap (1,000 rounds) standard errors: median {np.median(ratio):.3f}, "
          f"range [{ratio.min():.3f}, {ratio.max():.3f}]")

    elo = elo_permutations(jax.random.key(0), battles, num_permutations=1000)
    spread = np.asarray(elo.spread, np.float64)
    played = battles.battles_per_model()
    least = np.argsort(played)[:10]
    print(f"online Elo over 1,000 vote orders: median 95% spread {np.median(spread):.1f} Elo; "
          f"10 least-played models ({int(played[least].min())}-{int(played[least].max())} votes): median {np.median(spread[least]):.1f}; "
          f"largest {spread.max():.1f} ({models[int(np.argmax(spread))]}, {int(played[np.argmax(spread)])} votes), "
          f"six widest {np.sort(spread)[-6]:.1f}-{spread.max():.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
