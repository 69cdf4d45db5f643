"""jaxrank.evaluation.design_curves (replays of sampling designs) and its figure."""

from __future__ import annotations

import numpy as np
import pytest

import jax

from jaxrank import active
from jaxrank.evaluation import DesignCurves, design_curves


@pytest.fixture(scope="module")
def curves():
    arena = active.synthetic_arena(jax.random.key(5), num_models=4, num_units=600, judge_agreement=0.8)
    return design_curves(jax.random.key(0), arena.human, np.asarray(arena.scores), num_models=4, judge=arena.judge,
                         budgets=(0.2, 0.5, 1.0), designs=("uniform", "proportional", "ppi"), num_replays=64,
                         uniform_mix=0.3), arena


def test_design_curves_report_every_design_and_budget(curves):
    c, arena = curves
    assert isinstance(c, DesignCurves) and c.designs == ("uniform", "proportional", "ppi")
    assert c.num_labels.tolist() == [120, 300, 600]
    for name in ("coverage", "width", "width_superpopulation", "kendall_tau", "lam", "effective_labels"):
        assert getattr(c, name).shape == (3, 3) and np.isfinite(getattr(c, name)).all(), name
    # at 100 % every design labels everything: the full-data fit itself, width 0, tau 1
    assert np.all(c.coverage[:, -1] == 1.0) and np.allclose(c.width[:, -1], 0.0, atol=1e-6)
    assert np.allclose(c.kendall_tau[:, -1], 1.0)
    assert np.allclose(c.width_superpopulation[:, -1], c.width_superpopulation[0, -1], rtol=1e-4)
    # below 100 %: calibrated within Monte-Carlo error, widths shrinking with the budget
    partial = c.coverage[:, :-1]
    assert np.all(np.abs(partial - 0.95) <= 4 * c.coverage_stderr[:, :-1] + 0.01), partial
    assert np.all(np.diff(c.width, axis=1) < 0) and np.all(np.diff(c.width_superpopulation, axis=1) < 0)
    # uniform is its own equivalent; a good judge (copies the humans 80 % of the time) beats it
    np.testing.assert_allclose(c.equivalent_uniform[0], c.budgets, rtol=1e-9)
    ppi = c.designs.index("ppi")
    assert np.all(c.equivalent_uniform[ppi, :-1] > c.budgets[:-1])
    assert np.all(c.effective_labels[ppi, :-1] > c.num_labels[:-1]) and np.all(c.lam[ppi, :-1] > 0.5)
    # nothing reaches labelling everything before everything is labelled (full-data variance + design term)
    assert np.all(c.labels_to_match > 0.5)
    frame = c.to_frame()
    assert len(frame) == 9 and {"design", "budget", "coverage", "equivalent_uniform", "labels_to_match"} <= set(frame)


def test_design_curves_figure(curves, tmp_path):
    from jaxrank.plots import plot_design_curves

    c, _ = curves
    path = plot_design_curves(c, tmp_path / "designs.png", title="synthetic")
    assert path.stat().st_size > 10_000


def test_design_curves_bad_input(curves):
    _, arena = curves
    with pytest.raises(ValueError, match="designs: 'ppi' needs judge votes"):
        design_curves(jax.random.key(0), arena.human, np.asarray(arena.scores), num_models=4, designs=("ppi",))
    with pytest.raises(ValueError, match="designs: unknown design 'active'"):
        design_curves(jax.random.key(0), arena.human, np.asarray(arena.scores), num_models=4, designs=("active",))
    with pytest.raises(ValueError, match="budgets must be shares in \\(0, 1\\]"):
        design_curves(jax.random.key(0), arena.human, np.asarray(arena.scores), num_models=4, budgets=(0.5, 2.0))
