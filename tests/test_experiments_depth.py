"""experiments/depth.py: the grid is the protocol, and the mechanism's numbers
of a tiny trained run agree with independent NumPy computations."""

import numpy as np
import pytest

from experiments import depth, runs
from experiments.configs.depth import get_config
from tfjax import loading, train
from tfjax.data.pipeline import read_batch


def test_grid_is_the_protocol():
  c = get_config("")
  assert c.validation_fraction == 0.2 and c.seeds == 5 and tuple(c.depths) == (1, 2, 3, 5)
  grid = depth.settings(c)
  assert [(n, f, d) for n, f, d, _ in grid] == [
    (n, f, d)
    for n, forms in (("transfusion", ("learned", "none")), ("transfusion_ssl", ("none",)))
    for f in forms
    for d in (1, 2, 3, 5)
  ]
  for name, form, layers, cfg in grid:
    assert cfg.head.num_layers == layers and cfg.head.final_projection == form
    assert cfg.labels_in_loss == (name == "transfusion")
    assert cfg.num_steps == (800 if name == "transfusion" else 1600)  # the recipes' steps
    assert cfg.augment == ("signal" if name == "transfusion_ssl" else "")


def test_unknown_form_is_refused_in_one_line():
  c = get_config("tiny")
  c.forms.transfusion = "learned,qk"
  with pytest.raises(ValueError, match=r"forms.transfusion names unknown runs \['qk'\]"):
    depth.settings(c)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  c = get_config("tiny")
  name, form, layers, cfg = depth.settings(c)[1]  # class targets, parameter-free, L = 2
  assert (name, layers) == ("transfusion", 2)
  run_dir = str(tmp_path_factory.mktemp("depth") / "run")
  train.train_and_evaluate(runs.with_fields(cfg, seed=0), run_dir, progress=False)
  return run_dir


def test_mechanism_matches_numpy(tiny_run):
  batch = 12
  got = depth.mechanism(tiny_run, batch)
  r = loading.load_run(tiny_run)
  b = read_batch(r.source("validation"), np.arange(batch))
  a = np.asarray(r.adjacency(b["x"]), np.float64)  # the final block's adjacency
  y = np.asarray(b["label"])
  same = (y[:, None] == y[None, :]) & ~np.eye(batch, dtype=bool)
  assert len(got["own_mass_layers"]) == 2
  np.testing.assert_allclose(got["own_mass"], (a * same).sum(1).mean(), rtol=1e-5)
  np.testing.assert_allclose(got["chance_mass"], (same.sum(1) / (batch - 1)).mean(), rtol=1e-6)
  assert all(0.0 <= m <= 1.0 for m in got["own_mass_layers"])
  off = a[~np.eye(batch, dtype=bool)].reshape(batch, batch - 1)
  uniform = (off.max(1) - off.min(1)) <= 1e-6 / (batch - 1)
  assert got["dead_rows"] == pytest.approx(uniform.mean())
  assert 1 <= got["fused_rank"] <= r.config.embed_dim
  assert np.isfinite(got["backbone_grad"]) and got["backbone_grad"] > 0
