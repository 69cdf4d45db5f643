"""Leaderboards from pairwise votes: Bradley–Terry fits with ties, soft outcomes and style control, Elo,
uncertainty.

Every function takes the one vote table, `jaxrank.Votes` (`jaxrank.load_votes`):

- `fit_bradley_terry` / `BTResult`: maximum-likelihood Bradley–Terry with tie models and soft outcomes,
  optional style covariates, differentiable in the row weights; `outcome_log_probs` is the one definition
  of the likelihoods;
- `bootstrap_ratings`, `sandwich_intervals`, `rank_upper_bound`, `rank_by_rating`, `tied_groups`;
- `online_elo`, `elo_permutations`;
- `synthetic_votes`: arenas drawn from a known model.
"""

from jaxrank.ratings.bradley_terry import (
    TIE_MODELS,
    BTResult,
    BTSolution,
    bt_negative_log_likelihood,
    fit_bradley_terry,
    outcome_log_probs,
    outcome_probabilities,
    solve_bradley_terry,
    style_design,
)
from jaxrank.ratings.synthetic import synthetic_votes

__all__ = [
    "TIE_MODELS",
    "BTResult",
    "BTSolution",
    "outcome_log_probs",
    "outcome_probabilities",
    "bt_negative_log_likelihood",
    "solve_bradley_terry",
    "style_design",
    "fit_bradley_terry",
    "synthetic_votes",
]

# Online Elo and uncertainty (intervals, ranks, save/restore).
from jaxrank.ratings.elo import EloPermutationResult, elo_permutations, online_elo  # noqa: E402
from jaxrank.ratings.uncertainty import (  # noqa: E402
    BootstrapResult,
    SandwichResult,
    bootstrap_ratings,
    load_leaderboard,
    rank_by_rating,
    rank_upper_bound,
    resampled_weights,
    sandwich_intervals,
    save_leaderboard,
    tied_groups,
)

__all__ += [
    "online_elo",
    "elo_permutations",
    "EloPermutationResult",
    "bootstrap_ratings",
    "resampled_weights",
    "BootstrapResult",
    "sandwich_intervals",
    "SandwichResult",
    "rank_upper_bound",
    "rank_by_rating",
    "tied_groups",
    "save_leaderboard",
    "load_leaderboard",
]
