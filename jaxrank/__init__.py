"""jaxrank: label-efficient LLM evaluation on accelerators.

The public API, re-exported name by name:

- prompt prioritization: `score_pairs`, `prioritize`, `sequence_kl_estimate` (different tokenizers),
  and the per-position kernels `kl_divergence`, `cross_entropy`, `entropy`, `jensen_shannon`,
  `divergences`;
- sharding: `make_mesh`, `initialize_distributed`, `score_pairs_global`;
- leaderboards (`jaxrank.ratings`): `load_battles`, `Battles`, `fit_bradley_terry`, `BTResult`,
  `outcome_log_probs`, `synthetic_battles`, `online_elo`, `elo_permutations`, `bootstrap_ratings`,
  `sandwich_intervals`, `rank_upper_bound`, `save_leaderboard`, `load_leaderboard`;
- judge budgets: the `allocation` module (`init`/`select`/`update`, `simulate`, `simulate_sweep`);
- prompt features for P2L: `prompt_features` (model files load only when called).

Language models live in `jaxrank.lm` (imported on demand: it needs the `lm` extra).
"""

__version__ = "0.1.0"

# Prompt prioritization: per-position kernels and per-sequence scores.
from jaxrank.divergence import METRICS, cross_entropy, divergences, entropy, jensen_shannon, kl_divergence
from jaxrank.scoring import EmptySequenceWarning, prioritize, score_pairs, sequence_kl_estimate
from jaxrank.sharding import initialize_distributed, make_mesh, score_pairs_global

# Leaderboards.
from jaxrank.ratings import (
    Battles,
    BTResult,
    bootstrap_ratings,
    elo_permutations,
    fit_bradley_terry,
    load_battles,
    load_leaderboard,
    online_elo,
    outcome_log_probs,
    rank_upper_bound,
    sandwich_intervals,
    save_leaderboard,
    synthetic_battles,
)

# Judge budgets.
from jaxrank import allocation
from jaxrank.allocation import AllocatorState, SimulationResult, simulate, simulate_sweep

# Prompt features (P2L): last-token hidden states of a causal LM or pooled sentence embeddings.
from jaxrank.lm.features import prompt_features
# p2l routing
from jaxrank._routing import RoutingResult, optimal_policy, route, route_average_budget, router_rating
from jaxrank._routing import router_scores, win_probabilities
# p2l heads, training, aggregation
from jaxrank.p2l import P2LHead, P2LLeaderboard, P2LModel, PromptVotes, aggregate_leaderboard, load_p2l
from jaxrank.p2l import make_prompt_votes, p2l_loss, save_p2l, train_p2l

__all__ = [
    "__version__",
    # prompt prioritization
    "METRICS",
    "cross_entropy",
    "divergences",
    "entropy",
    "jensen_shannon",
    "kl_divergence",
    "EmptySequenceWarning",
    "prioritize",
    "score_pairs",
    "sequence_kl_estimate",
    # sharding
    "initialize_distributed",
    "make_mesh",
    "score_pairs_global",
    # leaderboards
    "Battles",
    "BTResult",
    "bootstrap_ratings",
    "elo_permutations",
    "fit_bradley_terry",
    "load_battles",
    "load_leaderboard",
    "online_elo",
    "outcome_log_probs",
    "rank_upper_bound",
    "sandwich_intervals",
    "save_leaderboard",
    "synthetic_battles",
    # judge budgets
    "allocation",
    "AllocatorState",
    "SimulationResult",
    "simulate",
    "simulate_sweep",
    # prompt features
    "prompt_features",
    # p2l routing
    "RoutingResult",
    "optimal_policy",
    "route",
    "route_average_budget",
    "router_rating",
    "router_scores",
    "win_probabilities",
    # p2l heads, training, aggregation
    "P2LHead",
    "P2LLeaderboard",
    "P2LModel",
    "PromptVotes",
    "aggregate_leaderboard",
    "load_p2l",
    "make_prompt_votes",
    "p2l_loss",
    "save_p2l",
    "train_p2l",
]
