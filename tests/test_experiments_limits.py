"""Experiment 5 (TransFusion's limits): a tiny end-to-end run plus its helpers."""

import json
import math
import os

import numpy as np
import pytest

from experiments import limits
from tfjax import theory


def test_equicorrelated_centres_exact():
  rng = np.random.default_rng(3)
  for k, d, rho in ((4, 16, 0.3), (5, 8, -0.25), (3, 3, 0.0)):
    c = limits.equicorrelated_centres(rng, k, d, rho).astype(np.float64)
    gram = c @ c.T
    want = np.full((k, k), rho)
    np.fill_diagonal(want, 1.0)
    np.testing.assert_allclose(gram, want, atol=1e-5)


def test_measured_limits_operational_definitions():
  values = [1, 2, 3, 4, 5]
  accs = [0.70, 0.80, 0.79, 0.60, 0.78]
  # largest value within tol of the best (0.80): 5 (0.78 ≥ 0.77)
  assert limits.measured_max(values, accs, 0.02) == 5
  assert limits.measured_max(values, accs, 0.005) == 2
  # smallest value from which on all larger values pass: only 5 passes at the end
  assert limits.measured_min(values, accs, 0.02) == 5
  assert limits.measured_min(values, [0.5, 0.79, 0.8, 0.795, 0.8], 0.02) == 2
  assert limits.tolerance(0.5, 100, 0.02) == pytest.approx(0.1)
  assert limits.tolerance(1.0, 100, 0.02) == 0.02


def test_empirical_cosines_match_theory():
  rng = np.random.default_rng(0)
  c = limits.equicorrelated_centres(rng, 4, 256, 0.2)
  cp, co = limits.empirical_cosines(rng, c, 1.0, 1.5, n=4000)
  # SE of a mean cosine over 4000 pairs at d=256 is < 0.002
  assert cp == pytest.approx(float(theory.expected_cosine(1.0, 1.5, 0.2, 256.0)), abs=0.01)
  assert co == pytest.approx(float(theory.expected_cosine(
      1.0, 1.5, 0.2, 256.0, pair="other_class")), abs=0.01)


@pytest.mark.slow
def test_tiny_run_writes_sane_results(tmp_path):
  out = limits.main(["--tiny", "--workdir", str(tmp_path)])
  for name in ("limits_augmentation.png", "limits_batch.png",
               "limits_coverage.png", "results.md", "results.json"):
    assert os.path.getsize(tmp_path / name) > 0, name
  text = (tmp_path / "results.md").read_text()
  assert "predicted" in text and "measured" in text and "## Notes" in text
  data = json.loads((tmp_path / "results.json").read_text())
  cfg = limits.SIZES["tiny"]
  aug, bat = out["augmentation"], out["batch"]
  assert [r["s"] for r in aug["rows"]] == list(cfg["s_grid"])
  assert [r["n"] for r in bat["rows"]] == list(cfg["n_grid"])
  for r in aug["rows"] + bat["rows"]:
    assert 0.0 <= r["knn_acc"] <= 1.0
    assert 0.0 <= r["final_jsd"] <= math.log(2) + 1e-6
  assert aug["measured_s_max"] in cfg["s_grid"]
  assert bat["measured_n_min"] in cfg["n_grid"]
  assert aug["predicted_s_max_other"] == pytest.approx(float(theory.max_augmentation(
      cfg["sigma"], cfg["rho"], cfg["d"], margin_z=2.0)))
  assert bat["predicted_n_min"] == theory.min_batch_size(cfg["k"], cfg["delta"])
  # self-supervised with 2 views: every row is covered, exactly
  assert all(r["uncovered"] == 0.0 for r in aug["rows"])
  for r in bat["rows"]:
    # steps·n rows, treated as independent (the run is seeded, so this is
    # deterministic): 5 binomial standard errors
    se = math.sqrt(r["uncovered_theory"] * (1 - r["uncovered_theory"])
                   / (cfg["steps"] * r["n"]))
    assert abs(r["uncovered"] - r["uncovered_theory"]) <= 5 * se
  assert data["batch"]["predicted_n_min"] == bat["predicted_n_min"]
