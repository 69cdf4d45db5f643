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
  `train_p2l`, `choose_delta_l2`, `P2LModel`, `save_p2l` / `load_p2l`, `aggregate_leaderboard`, `p2l_loss`,
  the backbone fine-tuned (`jaxrank.p2l_finetune`): `train_p2l_finetune`, `FinetunedP2L`, and routing
  under a cost budget: `route`, `route_average_budget`, `router_rating`, `win_probabilities`;
- evaluation: `tie_reduction`, `leaderboard_stability`, `budget_curves`, the rank metrics `kendall_tau`,
  `spearman`, `pairs_agreement`, and `load_scores`.

Language models live in `jaxrank.lm`; loading real checkpoints and tokenizers needs the `lm` extra.
"""

__version__ = "0.1.0"

# Every public name and the module that defines it. They are imported on first use (PEP 562), so
# `import jaxrank` and `jaxrank --help` do not pay for JAX, pandas, flax or transformers up front.
_EXPORTS: dict[str, tuple[str, ...]] = {
    # Prompt prioritization: per-position kernels and per-sequence scores.
    "jaxrank.divergence": ("METRICS", "cross_entropy", "divergences", "entropy", "jensen_shannon", "kl_divergence"),
    "jaxrank.scoring": ("EmptySequenceWarning", "prioritize", "score_pairs", "sequence_kl_estimate"),
    "jaxrank.sharding": ("initialize_distributed", "make_mesh", "score_pairs_global"),
    # The vote table.
    "jaxrank.votes": ("VoteRows", "Votes", "load_votes"),
    # Leaderboards.
    "jaxrank.ratings": (
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
    ),
    "jaxrank.ratings.leaderboard": ("Leaderboard", "filter_votes", "leaderboard", "pairwise_matrices"),
    # Judge budgets.
    "jaxrank.allocation": ("AllocatorState", "SimulationResult", "simulate", "simulate_sweep"),
    # p2l routing
    "jaxrank.routing": (
        "RoutingResult", "optimal_policy", "route", "route_average_budget", "router_rating", "router_scores",
        "win_probabilities",
    ),
    # Prompt features (P2L): last-token hidden states of a causal LM or pooled sentence embeddings.
    "jaxrank.lm.features": ("prompt_features",),
    # evaluation
    "jaxrank.evaluation": (
        "DEFAULT_FRACTIONS", "load_scores", "kendall_tau", "pairs_agreement",
        "spearman", "StabilityResult", "TieReductionResult", "leaderboard_stability", "tie_reduction",
        "BudgetCurves", "budget_curves", "DesignCurves", "design_curves",
    ),
    # Active sampling: designs, design-weighted and prediction-powered leaderboards.
    "jaxrank.active": ("DesignLeaderboard", "design_leaderboard", "load_plan"),
    # p2l heads, training, aggregation
    "jaxrank.p2l": (
        "P2LHead", "P2LLeaderboard", "P2LModel", "aggregate_leaderboard", "load_p2l", "p2l_loss", "save_p2l",
        "train_p2l", "choose_delta_l2",
    ),
    # P2L with the backbone fine-tuned (last-k blocks or LoRA)
    "jaxrank.p2l_finetune": ("FinetunedP2L", "train_p2l_finetune", "save_p2l_finetune", "load_p2l_finetune"),
    # The persistent XLA compilation cache.
    "jaxrank.cache": ("enable_compilation_cache",),
}
# Sub-modules that are public names themselves.
_MODULES = ("allocation", "active")
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}


def __getattr__(name: str):
    import importlib

    if name in _MODULES:
        return importlib.import_module(f"jaxrank.{name}")
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'jaxrank' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


# Every public name once: the lazy table above is the one list.
__all__ = ["__version__", *_MODULES, *(name for names in _EXPORTS.values() for name in names)]
