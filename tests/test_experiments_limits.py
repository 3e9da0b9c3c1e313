"""Experiment 5 (TransFusion's limits): a tiny end-to-end run plus its helpers."""

import json
import math
import os

import numpy as np
import pytest

from experiments import limits
from experiments.configs.limits import get_config
from tfjax import theory


def test_equicorrelated_centres_exact():
  rng = np.random.default_rng(3)
  for k, d, rho in ((4, 16, 0.3), (5, 8, -0.25), (3, 3, 0.0)):
    c = theory.equicorrelated_centres(rng, k, d, rho).astype(np.float64)
    gram = c @ c.T
    want = np.full((k, k), rho)
    np.fill_diagonal(want, 1.0)
    np.testing.assert_allclose(gram, want, atol=1e-5)


def test_measured_limits_operational_definitions():
  values = [1, 2, 3, 4, 5]
  accs = [0.70, 0.80, 0.79, 0.60, 0.78]
  # largest value within tol of the best (0.80): 5 (0.78 ≥ 0.77)
  assert theory.measured_max(values, accs, 0.02) == 5
  assert theory.measured_max(values, accs, 0.005) == 2
  # smallest value from which on all larger values pass: only 5 passes at the end
  assert theory.measured_min(values, accs, 0.02) == 5
  assert theory.measured_min(values, [0.5, 0.79, 0.8, 0.795, 0.8], 0.02) == 2
  assert theory.accuracy_tolerance(0.5, 100, 0.02) == pytest.approx(0.1)
  assert theory.accuracy_tolerance(1.0, 100, 0.02) == 0.02


def test_empirical_cosines_match_theory():
  rng = np.random.default_rng(0)
  c = theory.equicorrelated_centres(rng, 4, 256, 0.2)
  cp, co = theory.empirical_cosines(rng, c, 1.0, 1.5, n=4000)
  # SE of a mean cosine over 4000 pairs at d=256 is < 0.002
  assert cp == pytest.approx(float(theory.expected_cosine(1.0, 1.5, 0.2, 256.0)), abs=0.01)
  assert co == pytest.approx(
    float(theory.expected_cosine(1.0, 1.5, 0.2, 256.0, pair="other_class")), abs=0.01
  )


def test_grid_point_configs_are_valid_and_views_follow_the_model():
  """Each sweep's config passes the training checks; isotropic_noise is ``s u'``."""
  import jax
  from tfjax.data.augment import get_augmentation
  from tfjax.config import validate

  cfg = get_config("tiny")
  aug = limits.point_config(cfg, supervised=False, batch_size=8, strength=2.5)
  bat = limits.point_config(cfg, supervised=True, batch_size=12, strength=0.0)
  for c in (aug, bat):
    validate(c)
    assert c.augment == "isotropic_noise" and c.head.tie_qk_init
    assert c.embed_dim == 0 and c.schedule == "constant" and c.weight_decay == 0.0
  assert (aug.num_views, aug.label_fraction, aug.augment_strength) == (2, None, 2.5)
  assert (bat.num_views, bat.label_fraction, bat.labels_in_loss) == (1, 1.0, True)
  assert bat.batch_size == 12 and cfg.batch_size == 8  # the base is untouched
  # v − x = s u' with u' ~ N(0, I/d): E‖v − x‖² = s², per-coordinate var s²/d.
  d, s = 256, 3.0
  x = np.ones((d,), np.float32)
  fn = get_augmentation("isotropic_noise", "vector")
  keys = jax.random.split(jax.random.key(0), 2000)
  diff = np.asarray(jax.vmap(fn, in_axes=(0, None, None))(keys, x, s)) - x
  assert np.mean(np.sum(diff**2, 1)) == pytest.approx(s**2, rel=0.02)
  # Sources: labels i.i.d. uniform (not balanced), noise of norm σ.
  rng = np.random.default_rng(0)
  c = theory.equicorrelated_centres(rng, 4, d, 0.0)
  xs, ys = theory.sample_sources(rng, c, 2.0, 4000)
  assert xs.dtype == np.float32 and set(np.unique(ys)) == {0, 1, 2, 3}
  assert np.mean(np.sum((xs - c[ys]) ** 2, 1)) == pytest.approx(4.0, rel=0.02)
  assert limits.num_sources(cfg) == cfg.num_steps * cfg.batch_size


@pytest.mark.slow
def test_tiny_run_writes_sane_results(tmp_path):
  cfg = get_config("tiny")
  out = limits.run(cfg, str(tmp_path), progress=False)
  for name in (
    "limits_augmentation.png",
    "limits_batch.png",
    "limits_coverage.png",
    "results.md",
    "results.json",
  ):
    assert os.path.getsize(tmp_path / name) > 0, name
  text = (tmp_path / "results.md").read_text()
  assert "predicted" in text and "measured" in text and "## Notes" in text
  assert "SPEC" not in text
  data = json.loads((tmp_path / "results.json").read_text())
  aug, bat = out["augmentation"], out["batch"]
  assert [r["s"] for r in aug["rows"]] == list(cfg.s_grid)
  assert [r["n"] for r in bat["rows"]] == list(cfg.n_grid)
  for r in aug["rows"] + bat["rows"]:
    assert 0.0 <= r["knn_acc"] <= 1.0
    assert 0.0 <= r["final_jsd"] <= math.log(2) + 1e-6
  assert 0.0 <= out["baselines"]["raw"] <= 1.0 and 0.0 <= out["baselines"]["init"] <= 1.0
  assert aug["measured_s_max"] in cfg.s_grid
  assert bat["measured_n_min"] in cfg.n_grid
  m = cfg.model
  assert aug["predicted_s_max_other"] == pytest.approx(
    float(theory.max_augmentation(m.sigma, m.rho, m.dim, margin_z=2.0))
  )
  assert bat["predicted_n_min"] == theory.min_batch_size(m.num_classes, cfg.delta)
  # self-supervised with 2 views: every row is covered, exactly
  assert all(r["uncovered"] == 0.0 for r in aug["rows"])
  for r in bat["rows"]:
    assert r["steps"] == cfg.num_steps  # one rows_without_positive per step
    # steps·n rows, treated as independent (the run is seeded, so this is
    # deterministic): 5 binomial standard errors
    se = math.sqrt(r["uncovered_theory"] * (1 - r["uncovered_theory"]) / (cfg.num_steps * r["n"]))
    assert abs(r["uncovered"] - r["uncovered_theory"]) <= 5 * se
  assert data["batch"]["predicted_n_min"] == bat["predicted_n_min"]
  # Every grid point went through the one training loop with its own config.
  for name, views, strength in (
    ("aug_s1", 2, 1.0),
    ("aug_s4", 2, 4.0),
    ("batch_n4", 1, cfg.s_batch),
  ):
    run_cfg = json.loads((tmp_path / name / "config.json").read_text())
    assert run_cfg["num_views"] == views and run_cfg["augment_strength"] == strength
    assert (tmp_path / name / "metrics.jsonl").stat().st_size > 0
