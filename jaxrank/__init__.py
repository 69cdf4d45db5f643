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
- evaluation: `tie_reduction`, `leaderboard_stability`, `budget_curves`, the rank metrics `kendall_tau`,
  `spearman`, `pairs_agreement`, and `load_prompt_votes` / `load_scores` / `PromptVotes`.

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

# evaluation
from jaxrank.evaluation import DEFAULT_FRACTIONS, PromptVotes, load_prompt_votes, load_scores
from jaxrank.evaluation import kendall_tau, pairs_agreement, spearman
from jaxrank.evaluation import StabilityResult, TieReductionResult, leaderboard_stability, tie_reduction
from jaxrank.evaluation import BudgetCurves, budget_curves

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
    # evaluation
    "DEFAULT_FRACTIONS",
    "PromptVotes",
    "load_prompt_votes",
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
]
