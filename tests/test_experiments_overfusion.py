"""Smoke test of experiments/overfusion.py at its --tiny size (one base loss ± OAR)."""

import json
import os

import numpy as np
import pytest

from experiments import overfusion


@pytest.mark.slow
def test_overfusion_tiny_writes_sane_results(tmp_path):
  rows = overfusion.main(["--tiny", "--losses", "barlow_twins",
                          "--workdir", str(tmp_path)])
  for name in ("overfusion_embeddings.png", "overfusion_variance.png",
               "results.md", "results.json"):
    assert os.path.getsize(tmp_path / name) > 0, name
  assert [r["run"] for r in rows] == ["barlow_twins", "OAR-barlow_twins"]
  with open(tmp_path / "results.json") as f:
    assert json.load(f) == rows
  md = (tmp_path / "results.md").read_text()
  assert "OAR-barlow_twins" in md and "## Notes" in md
  for r in rows:
    assert 0.0 <= r["variance"] <= 1.0
    assert 0.0 <= r["class_var"] <= 1.0
    assert r["rank95"] in (1, 2, 3)
    assert np.isfinite(r["final_loss"])
    # Three well separated lines: any working encoder beats chance (1/3) clearly.
    assert r["knn"] > 0.6, r
  plain, oar = rows
  assert plain["anchor_acc"] == ""
  # OAR pulls the classes to their anchors: nearest-anchor accuracy well above 1/3.
  assert oar["anchor_acc"] > 0.6, oar


def test_overfusion_rejects_unknown_loss(tmp_path):
  with pytest.raises(ValueError, match="unknown loss"):
    overfusion.main(["--tiny", "--losses", "nope", "--workdir", str(tmp_path)])


def test_augment_negates_or_keeps():
  import jax
  import jax.numpy as jnp
  x = jnp.asarray(np.random.default_rng(0).normal(size=(200, 3)), jnp.float32)
  y = np.asarray(overfusion.augment(jax.random.key(1), x, 0.0))
  sign = np.sign((y * np.asarray(x)).sum(1))
  np.testing.assert_allclose(y, sign[:, None] * np.asarray(x), rtol=1e-6)
  assert 0.3 < (sign < 0).mean() < 0.7
