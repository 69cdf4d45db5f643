"""jaxrank: label-efficient LLM evaluation on accelerators.

The public API, re-exported name by name:

- prompt prioritization: `score_pairs`, `prioritize`, `sequence_kl_estimate` (different tokenizers),
  and the per-position kernels `kl_divergence`, `cross_entropy`, `entropy`, `jensen_shannon`,
  `divergences`;
- sharding: `make_mesh`, `initialize_distributed`, `score_pairs_global`;
- the one vote table (`jaxrank.votes`): `Votes`, `load_votes` (Chatbot Arena, Kaggle 55k, FastChat,
  MT-Bench, AlpacaEval, LLMFAO, PandaLM layouts, auto-detected), `VoteRows` (the kernels' encoding);
- leaderboards (`jaxrank.ratings`): `fit_bradley_terry`, `BTResult`, `outcome_log_probs`, `style_design`,
  `synthetic_votes`, `online_elo`, `elo_permutations`, `bootstrap_ratings`, `sandwich_intervals`,
  `rank_upper_bound`, `rank_by_rating`, `tied_groups`, `save_leaderboard`, `load_leaderboard`, and
  `leaderboard` (the table `jaxrank leaderboard` prints: filters, groups, baseline win rates), `Leaderboard`,
  `filter_votes`, `pairwise_matrices`;
- judge budgets: the `allocation` module (`init`/`select`/`update`, `simulate`, `simulate_sweep`);
- Prompt-to-Leaderboard (`jaxrank.p2l`): `prompt_features` (model files load only when called),
  `train_p2l`, `P2LModel`, `save_p2l` / `load_p2l`, `aggregate_leaderboard`, `p2l_loss`, and routing
  under a cost budget: `route`, `route_average_budget`, `router_rating`, `win_probabilities`;
- evaluation: `tie_reduction`, `leaderboard_stability`, `budget_curves`, the rank metrics `kendall_tau`,
  `spearman`, `pairs_agreement`, and `load_scores`.

Language models live in `jaxrank.lm`; loading real checkpoints and tokenizers needs the `lm` extra.
"""

__version__ = "0.1.0"

# Prompt prioritization: per-position kernels and per-sequence scores.
from jaxrank.divergence import METRICS, cross_entropy, divergences, entropy, jensen_shannon, kl_divergence
from jaxrank.scoring import EmptySequenceWarning, prioritize, score_pairs, sequence_kl_estimate
from jaxrank.sharding import initialize_distributed, make_mesh, score_pairs_global

# The vote table.
from jaxrank.votes import VoteRows, Votes, load_votes

# Leaderboards.
from jaxrank.ratings import (
    BTResult,
    bootstrap_ratings,
    elo_permutations,
    fit_bradley_terry,
    load_leaderboard,
    online_elo,
    outcome_log_probs,
    rank_by_rating,
    rank_upper_bound,
    sandwich_intervals,
    save_leaderboard,
    style_design,
    synthetic_votes,
    tied_groups,
)
from jaxrank.ratings.leaderboard import Leaderboard, filter_votes, leaderboard, pairwise_matrices

# Judge budgets.
from jaxrank import allocation
from jaxrank.allocation import AllocatorState, SimulationResult, simulate, simulate_sweep

# p2l routing
from jaxrank.routing import RoutingResult, optimal_policy, route, route_average_budget, router_rating
from jaxrank.routing import router_scores, win_probabilities
# Prompt features (P2L): last-token hidden states of a causal LM or pooled sentence embeddings.
from jaxrank.lm.features import prompt_features
# evaluation
from jaxrank.evaluation import DEFAULT_FRACTIONS, load_scores
from jaxrank.evaluation import kendall_tau, pairs_agreement, spearman
from jaxrank.evaluation import StabilityResult, TieReductionResult, leaderboard_stability, tie_reduction
from jaxrank.evaluation import BudgetCurves, budget_curves
from jaxrank.evaluation import DesignCurves, design_curves
# active sampling: designs, design-weighted and prediction-powered leaderboards
from jaxrank import active
from jaxrank.active import DesignLeaderboard, design_leaderboard, load_plan
# p2l heads, training, aggregation
from jaxrank.p2l import P2LHead, P2LLeaderboard, P2LModel, aggregate_leaderboard, load_p2l
from jaxrank.p2l import p2l_loss, save_p2l, train_p2l

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
    # the vote table
    "Votes",
    "VoteRows",
    "load_votes",
    # leaderboards
    "BTResult",
    "bootstrap_ratings",
    "elo_permutations",
    "fit_bradley_terry",
    "load_leaderboard",
    "online_elo",
    "outcome_log_probs",
    "rank_by_rating",
    "rank_upper_bound",
    "sandwich_intervals",
    "save_leaderboard",
    "style_design",
    "synthetic_votes",
    "tied_groups",
    "Leaderboard",
    "leaderboard",
    "filter_votes",
    "pairwise_matrices",
    # judge budgets
    "allocation",
    "AllocatorState",
    "SimulationResult",
    "simulate",
    "simulate_sweep",
    # p2l routing
    "RoutingResult",
    "optimal_policy",
    "route",
    "route_average_budget",
    "router_rating",
    "router_scores",
    "win_probabilities",
    # prompt features
    "prompt_features",
    # evaluation
    "DEFAULT_FRACTIONS",
    "load_scores",
    "kendall_tau",
    "pairs_agreement",
    "spearman",
    "StabilityResult",
    "TieReductionResult",
    "leaderboard_stability",
    "tie_reduction",
    "BudgetCurves",
    "budget_curves",
    "DesignCurves",
    "design_curves",
    # active sampling
    "active",
    "DesignLeaderboard",
    "design_leaderboard",
    "load_plan",
    # p2l heads, training, aggregation
    "P2LHead",
    "P2LLeaderboard",
    "P2LModel",
    "aggregate_leaderboard",
    "load_p2l",
    "p2l_loss",
    "save_p2l",
    "train_p2l",
]
