"""matplotlib figures (optional extra `jaxrank[plot]`); matplotlib is imported inside each function only.

Every function writes one file (format from the suffix) and returns its path; the Agg backend is used
unless the caller already chose one, so plots work on headless machines.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import textwrap
from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxrank.outputs import FIGURE_FORMATS, check_output, write_file

__all__ = ["plot_budget_curves", "plot_design_curves", "plot_leaderboard", "plot_matrices", "plot_stability",
           "plot_tie_reduction"]


def _pyplot() -> Any:
    """Import matplotlib.pyplot on first use (headless backend), with a clear error when it is absent."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("plotting needs matplotlib: pip install 'jaxrank[plot]'") from err
    return plt


@contextlib.contextmanager
def _figure(path: str | os.PathLike, *, force: bool = False, title: str | None = None, suptitle: bool = False,
            dpi: int | None = None, **subplots: Any):
    """`plt.subplots(**subplots)` as `(fig, axes)`; on success adds the title, lays out and saves to `path`
    (`dpi` None: the figure's) atomically (`jaxrank.outputs.write_file`: an existing file only with `force`);
    the figure is closed either way. The target is checked before anything is drawn."""
    out = check_output(path, force=force, label="figure", suffixes=FIGURE_FORMATS)
    plt = _pyplot()
    fig, axes = plt.subplots(**subplots)
    try:
        yield fig, axes
        if title:
            # Long titles (file names) wrap instead of running off the figure's edge.
            width = max(30, int(fig.get_figwidth() * 9))
            title = "\n".join(textwrap.wrap(str(title), width=width)) or str(title)
            fig.suptitle(title) if suptitle else axes.set_title(title)
        fig.tight_layout()
        write_file(out, lambda tmp: fig.savefig(tmp, dpi=dpi))
    finally:
        plt.close(fig)


def plot_leaderboard(
    models: Sequence[str],
    ratings: Any,
    lower: Any,
    upper: Any,
    *,
    path: str | os.PathLike,
    title: str | None = None,
    force: bool = False,
) -> pathlib.Path:
    """Forest plot of a leaderboard: each model's rating with its interval, best on top.

    Args:
        models: M model names.
        ratings, lower, upper: float[M] ratings and interval bounds (Elo points).
        path: output file; the format follows the extension (`.png`, `.pdf`, `.svg`).
        title: optional figure title.
        force: replace an existing file at `path` (written atomically either way).

    Returns:
        The path written.

    Example:
        >>> plot_leaderboard(["a", "b"], [1010, 990], [1000, 975], [1020, 1003], path="lb.png")  # doctest: +SKIP
    """
    ratings = np.asarray(ratings, np.float64)
    lower = np.asarray(lower, np.float64)
    upper = np.asarray(upper, np.float64)
    models = [str(m) for m in models]
    m = len(models)
    if m == 0:
        raise ValueError("models is empty; nothing to plot")
    for name, arr in (("ratings", ratings), ("lower", lower), ("upper", upper)):
        if arr.shape != (m,):
            raise ValueError(f"{name} must have shape [M] = ({m},), one value per model, got {arr.shape}")
    order = np.argsort(-ratings, kind="stable")
    y = np.arange(m)[::-1]
    height = max(2.5, 0.22 * m + 1.0)
    with _figure(path, force=force, title=title, dpi=120, figsize=(7.0, height)) as (fig, ax):
        r = ratings[order]
        ax.errorbar(
            r, y, xerr=np.stack([r - lower[order], upper[order] - r]), fmt="o", color="tab:blue",
            ecolor="tab:gray", elinewidth=1.2, capsize=2.5, markersize=4,
        )
        ax.set_yticks(y)
        ax.set_yticklabels([models[i] for i in order], fontsize=8 if m > 30 else 10)
        ax.set_xlabel("rating (Elo scale)")
        ax.set_ylim(-1, m)
        ax.grid(axis="x", alpha=0.3)
    return pathlib.Path(path)


def plot_budget_curves(
    curves: Any,
    *,
    path: str | os.PathLike,
    title: str | None = None,
    metric: str = "wce",
    force: bool = False,
    warmup: int = 0,
) -> pathlib.Path:
    """Judge-budget error vs budget, one line per allocator with its interval over runs shaded.

    Args:
      curves: a `jaxrank.evaluation.BudgetCurves` (`budget_curves`), or
        {allocator: {"budget": [C], "wce_mean": [C], "wce_lower": [C], "wce_upper": [C]}}, e.g. from
        `jaxrank.allocation.error_summary` per allocator.
      path: the image file to write (format from the suffix, e.g. `.png`).
      title: optional figure title.
      force: replace an existing file at `path` (written atomically either way).
      metric: with a `BudgetCurves`, which error to draw: `"wce"` (worst case), `"mae"` or `"rmse"`;
        with a dict, the key prefix to read (`"<metric>_mean"`, ...).
      warmup: queries of the adaptive allocators' warm-up (every item scored alike), shaded; 0: none.

    Returns:
      The path written.

    Example:
        >>> plot_budget_curves({"uniform": {"budget": [100, 200], "wce_mean": [0.5, 0.3],
        ...                                 "wce_lower": [0.4, 0.25], "wce_upper": [0.6, 0.4]}},
        ...                    path="budget.png")  # doctest: +SKIP
    """
    labels = {"wce": r"worst-case error  $\max_i\,|s_i - \hat{s}_i|$",
              "mae": r"mean absolute error  $\frac{1}{K}\sum_i |s_i - \hat{s}_i|$",
              "rmse": r"RMSE  $\sqrt{\frac{1}{K}\sum_i (s_i - \hat{s}_i)^2}$"}
    if metric not in labels:
        raise ValueError(f"metric must be one of 'wce', 'mae', 'rmse', got {metric!r}")
    if hasattr(curves, "curves") and callable(curves.curves):
        curves = curves.curves(metric)
    if not curves:
        raise ValueError(f"curves is empty: expected {{allocator: {{budget, {metric}_mean, {metric}_lower, {metric}_upper}}}}")
    # Distinct line styles and markers: during a warm-up (every item scored alike) two allocators' lines
    # coincide, and one must stay visible on top of the other.
    styles = [("-", "o"), ("--", "s"), (":", "^"), ("-.", "D"), ((0, (5, 1, 1, 1)), "v")]
    with _figure(path, force=force, title=title, figsize=(7.0, 4.6), dpi=120) as (fig, ax):
        for i, (name, c) in enumerate(curves.items()):
            missing = {"budget", f"{metric}_mean"} - set(c)
            if missing:
                raise ValueError(f"curve {name!r} lacks {sorted(missing)}")
            ls, marker = styles[i % len(styles)]
            (line,) = ax.plot(c["budget"], c[f"{metric}_mean"], linestyle=ls, marker=marker, markersize=4,
                              linewidth=1.8, label=name, zorder=3 + i, markerfacecolor="none" if i % 2 else None)
            if f"{metric}_lower" in c and f"{metric}_upper" in c:
                ax.fill_between(c["budget"], c[f"{metric}_lower"], c[f"{metric}_upper"], color=line.get_color(), alpha=0.15)
        if warmup:
            ax.axvspan(0, warmup, color="tab:gray", alpha=0.12, zorder=0,
                       label=f"warm-up ({warmup:,} queries: every item scored alike)")
        ax.set_xlabel("judge queries (budget)")
        ax.set_ylabel(labels[metric])
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(title="allocator", fontsize=8)
    return pathlib.Path(path)


def plot_matrices(
    models: Sequence[str],
    matrices: Any,
    *,
    path: str | os.PathLike,
    title: str | None = None,
    force: bool = False,
) -> pathlib.Path:
    """Heatmaps of the pairwise tables (`jaxrank.ratings.leaderboard.pairwise_matrices`), side by side: the
    observed win fraction, the number of battles and the fitted model's predicted win rate, row model vs
    column model, models in the given order (best first).

    Args:
        models: M model names, in display order.
        matrices: {"win_fraction", "battles", "predicted"} -> float[M, M] (rows and columns in `models` order).
        path: output file (`.png`, `.pdf`, `.svg`).
        title: optional figure title.

    Returns:
        The path written.
    """
    models = [str(m) for m in models]
    m = len(models)
    panels = [("win_fraction", "observed win fraction (row beats column)", "RdBu", (0.0, 1.0), ".2f"),
              ("battles", "battles", "Greens", None, ".0f"),
              ("predicted", "predicted win rate (row beats column)", "RdBu", (0.0, 1.0), ".2f")]
    for key, *_ in panels:
        arr = np.asarray(matrices[key], np.float64)
        if arr.shape != (m, m):
            raise ValueError(f"matrices[{key!r}] must have shape [M, M] = ({m}, {m}), got {arr.shape}")
    side = min(max(4.0, 0.42 * m + 2.2), 14.0)
    with _figure(path, force=force, title=title, suptitle=True, nrows=1, ncols=3, figsize=(3 * side, side + 0.6), dpi=110) as (fig, axes):
        for ax, (key, label, cmap, lim, fmt) in zip(axes, panels):
            arr = np.asarray(matrices[key], np.float64)
            vmin, vmax = lim if lim else (0.0, float(np.nanmax(arr)) if np.isfinite(arr).any() else 1.0)
            im = ax.imshow(np.ma.masked_invalid(arr), cmap=cmap, vmin=vmin, vmax=vmax)
            ax.set_title(label, fontsize=10)
            ax.set_xticks(range(m))
            ax.set_yticks(range(m))
            size = 9 if m <= 12 else 7 if m <= 25 else 5
            ax.set_xticklabels(models, rotation=60, ha="right", fontsize=size)
            ax.set_yticklabels(models, fontsize=size)
            ax.set_xlabel("column model")
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
            if m <= 16:
                for i in range(m):
                    for j in range(m):
                        if np.isfinite(arr[i, j]):
                            mid = (vmin + vmax) / 2
                            dark = abs(arr[i, j] - mid) > 0.3 * (vmax - vmin) if lim else arr[i, j] > 0.6 * vmax
                            ax.text(j, i, format(arr[i, j], fmt), ha="center", va="center", fontsize=7,
                                    color="white" if dark else "black")
        axes[0].set_ylabel("row model")
    return pathlib.Path(path)


def _result_arrays(result: Any, names: Sequence[str], what: str) -> dict[str, np.ndarray]:
    out = {}
    for name in names:
        try:
            out[name] = np.asarray(getattr(result, name), np.float64)
        except AttributeError:
            raise TypeError(f"result must be a {what} (it has no {name!r})") from None
    return out


def plot_tie_reduction(result: Any, path: str | os.PathLike, *, title: str | None = None,
                       force: bool = False) -> pathlib.Path:
    """Tie rate of the top-q prompts vs random q subsets (left), and the relative reduction with its
    interval (right), against the fraction q.

    Args:
        result: a `jaxrank.evaluation.TieReductionResult` (`tie_reduction`).
        path: output file (`.png`, `.pdf`, `.svg`).
        title: optional figure title.
        force: replace an existing file at `path` (written atomically either way).

    Returns:
        The path written.

    Example:
        >>> plot_tie_reduction(tie_reduction(jax.random.key(0), scores, votes), "ties.png")  # doctest: +SKIP
    """
    cols = ("fraction", "tie_rate_top", "tie_rate_random", "reduction", "lower", "upper")
    d = _result_arrays(result, cols, "TieReductionResult")
    q = 100.0 * d["fraction"]
    with _figure(path, force=force, title=title, suptitle=True, nrows=1, ncols=2, figsize=(10.0, 4.0), dpi=120) as (fig, (ax1, ax2)):
        ax1.plot(q, d["tie_rate_top"], marker="o", markersize=4, label="top q% by priority score")
        ax1.plot(q, d["tie_rate_random"], marker="s", markersize=4, linestyle="--", color="tab:gray",
                 label="random q% (mean)")
        ax1.set_xlabel("prompts labelled, q (%)")
        ax1.set_ylabel("tie rate (ties / votes)")
        ax1.set_ylim(bottom=0)
        ax1.grid(True, alpha=0.3)
        ax1.legend()
        # Infinite interval ends (a resample whose random side has no ties) are clipped to the axes.
        lo = np.where(np.isfinite(d["lower"]), d["lower"], np.nan)
        finite = np.concatenate([d["reduction"][np.isfinite(d["reduction"])], lo[np.isfinite(lo)], d["upper"][np.isfinite(d["upper"])]])
        floor = (finite.min() if finite.size else -1.0) - 0.1
        lo = np.where(np.isfinite(d["lower"]), d["lower"], floor)
        ax2.fill_between(q, lo, d["upper"], color="tab:blue", alpha=0.2,
                         label=f"{int(round(100 * float(getattr(result, 'confidence', 0.95))))}% bootstrap interval")
        ax2.plot(q, d["reduction"], marker="o", markersize=4, color="tab:blue", label="1 - top / random")
        ax2.axhline(0.0, color="black", linewidth=0.8)
        ax2.set_xlabel("prompts labelled, q (%)")
        ax2.set_ylabel("relative tie reduction")
        ax2.grid(True, alpha=0.3)
        ax2.legend()
    return pathlib.Path(path)


_STABILITY_LABELS = {
    "kendall_tau": "Kendall tau vs gold",
    "spearman": "Spearman rho vs gold",
    "pairs_agree": "pairs ordered as in gold",
    "max_rating_diff": "largest |rating - gold| (Elo points)",
}


def plot_stability(
    result: Any,
    path: str | os.PathLike,
    *,
    metric: str = "kendall_tau",
    title: str | None = None,
    force: bool = False,
) -> pathlib.Path:
    """Rank correlation (or another stability metric) of the top-q leaderboard with the gold one vs q,
    with its interval as error bars, and the random-q baseline as a line with its band.

    Args:
        result: a `jaxrank.evaluation.StabilityResult` (`leaderboard_stability`).
        path: output file (`.png`, `.pdf`, `.svg`).
        metric: `"kendall_tau"`, `"spearman"`, `"pairs_agree"` or `"max_rating_diff"`.
        title: optional figure title.
        force: replace an existing file at `path` (written atomically either way).

    Returns:
        The path written.

    Example:
        >>> plot_stability(leaderboard_stability(jax.random.key(0), scores, votes), "stability.png")  # doctest: +SKIP
    """
    if metric not in _STABILITY_LABELS:
        raise ValueError(f"metric must be one of {', '.join(repr(m) for m in _STABILITY_LABELS)}, got {metric!r}")
    names = ["fraction", metric, f"{metric}_lower", f"{metric}_upper",
             f"random_{metric}", f"random_{metric}_lower", f"random_{metric}_upper"]
    d = _result_arrays(result, names, "StabilityResult")
    q = 100.0 * d["fraction"]
    with _figure(path, force=force, title=title, figsize=(6.4, 4.2), dpi=120) as (fig, ax):
        band = f"random q% (mean, {int(round(100 * float(getattr(result, 'confidence', 0.95))))}% of subsets)"
        ax.fill_between(q, d[f"random_{metric}_lower"], d[f"random_{metric}_upper"], color="tab:gray", alpha=0.25)
        ax.plot(q, d[f"random_{metric}"], linestyle="--", marker="s", markersize=3, color="tab:gray", label=band)
        # The interval is drawn as computed (a vertical bar from lower to upper), the point separately: a
        # point outside its own interval stays visible as such.
        y = d[metric]
        lo, hi = d[f"{metric}_lower"], d[f"{metric}_upper"]
        has = np.isfinite(lo) & np.isfinite(hi)
        if np.any(has):
            ax.vlines(q[has], lo[has], hi[has], color="tab:blue", linewidth=1.5, alpha=0.8,
                      label=f"top q% {int(round(100 * float(getattr(result, 'confidence', 0.95))))}% interval")
            ax.hlines(np.concatenate([lo[has], hi[has]]), np.tile(q[has], 2) - 0.8, np.tile(q[has], 2) + 0.8,
                      color="tab:blue", linewidth=1.5, alpha=0.8)
        ax.plot(q, y, "o-", markersize=4, color="tab:blue", label="top q% by priority score")
        ax.set_xlabel("prompts labelled, q (%)")
        ax.set_ylabel(_STABILITY_LABELS[metric])
        if metric != "max_rating_diff":
            ax.axhline(1.0, color="black", linewidth=0.6, alpha=0.5)
        ax.grid(True, alpha=0.3)
        ax.legend()
    return pathlib.Path(path)


def plot_design_curves(curves: Any, path: str | os.PathLike, *, title: str | None = None,
                       force: bool = False) -> pathlib.Path:
    """Sampling designs per label budget: coverage of the full-data leaderboard by the 95 % design intervals
    (with the 93-97 % band and Monte-Carlo error bars), mean interval width (design-based solid,
    superpopulation dashed), and Kendall tau to the full-data leaderboard; one line per design.

    Args:
        curves: a `jaxrank.evaluation.DesignCurves` (`design_curves`).
        path: output file (`.png`, `.pdf`, `.svg`).
        title: optional figure title.

    Returns:
        The path written.

    Example:
        >>> plot_design_curves(design_curves(key, human, scores, num_models=5), "designs.png")  # doctest: +SKIP
    """
    d = _result_arrays(curves, ("budgets", "coverage", "coverage_stderr", "width", "width_superpopulation",
                                "kendall_tau"), "DesignCurves")
    designs = tuple(getattr(curves, "designs"))
    q = 100.0 * d["budgets"]
    nominal = 100.0 * float(getattr(curves, "confidence", 0.95))
    with _figure(path, force=force, title=title, suptitle=True, nrows=1, ncols=3, figsize=(14.0, 4.2), dpi=120) as (fig, axes):
        ax1, ax2, ax3 = axes
        ax1.axhspan(nominal - 2, nominal + 2, color="tab:green", alpha=0.12, label=f"{nominal - 2:g}-{nominal + 2:g} %")
        ax1.axhline(nominal, color="tab:green", linewidth=0.8)
        partial = d["budgets"] < 1.0  # at 100 % every design returns the full-data fit (width 0): not drawn
        for i, name in enumerate(designs):
            ax1.errorbar(q[partial], 100 * d["coverage"][i][partial], yerr=100 * 1.96 * d["coverage_stderr"][i][partial],
                         marker="o", markersize=3, capsize=2, label=name)
            (line,) = ax2.plot(q, d["width"][i], marker="o", markersize=3, label=f"{name} (design)")
            ax2.plot(q, d["width_superpopulation"][i], linestyle="--", color=line.get_color(), alpha=0.7)
            ax3.plot(q, d["kendall_tau"][i], marker="o", markersize=3, label=name)
        ax1.set_xlabel("prompts labelled (%)")
        ax1.set_ylabel("coverage of the full-data ratings (%)")
        ax1.grid(True, alpha=0.3)
        ax1.legend(fontsize=8)
        ax2.set_xlabel("prompts labelled (%)")
        ax2.set_ylabel("mean interval width (Elo points)\nsolid: design, dashed: superpopulation")
        # At tiny budgets a model with almost no labelled votes has a huge width: it would flatten the rest.
        ref = d["width_superpopulation"][designs.index("uniform") if "uniform" in designs else 0]
        ref = ref[np.isfinite(ref)]
        widths = np.concatenate([d["width"].ravel(), d["width_superpopulation"].ravel()])
        if ref.size and np.nanmax(widths) > 1.5 * ref.max():
            ax2.set_ylim(0, 1.5 * ref.max())
            ax2.text(0.98, 0.98, "some widths off scale", transform=ax2.transAxes, ha="right", va="top", fontsize=8)
        else:
            ax2.set_ylim(bottom=0)
        ax2.grid(True, alpha=0.3)
        ax2.legend(fontsize=8)
        ax3.set_xlabel("prompts labelled (%)")
        ax3.set_ylabel("Kendall tau to the full-data leaderboard")
        ax3.grid(True, alpha=0.3)
        ax3.legend(fontsize=8)
    return pathlib.Path(path)
