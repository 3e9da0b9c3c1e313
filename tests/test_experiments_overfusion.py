"""Smoke tests of experiments/overfusion.py at its tiny size (one base loss ± OAR)."""

import json
import os

import numpy as np
import pytest

from experiments import overfusion
from experiments.configs.overfusion import get_config


def _tiny(loss="barlow_twins"):
  c = get_config("tiny")
  c.losses = loss
  return c


@pytest.mark.slow
def test_overfusion_tiny_writes_sane_results(tmp_path):
  rows = overfusion.run(_tiny(), str(tmp_path), progress=False)
  for name in (
    "overfusion_embeddings.png",
    "overfusion_variance.png",
    "results.md",
    "results.json",
  ):
    assert os.path.getsize(tmp_path / name) > 0, name
  assert [r["run"] for r in rows] == ["Barlow Twins", "OAR-Barlow Twins"]
  with open(tmp_path / "results.json") as f:
    assert json.load(f) == rows
  md = (tmp_path / "results.md").read_text()
  assert "OAR-Barlow Twins" in md and "## Notes" in md
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
  # Each run went through the library's loop, with the experiment's recipe.
  run_dir = tmp_path / "runs" / "seed0"
  with open(run_dir / "oar_barlow_twins" / "config.json") as f:
    cfg = json.load(f)
  assert cfg["oar_weight"] == 1.0 and cfg["label_fraction"] == 0.1
  assert cfg["augment"] == "sign_flip_noise" and cfg["embed_dim"] == 0
  with open(run_dir / "barlow_twins" / "config.json") as f:
    cfg = json.load(f)
  assert cfg["oar_weight"] == 0.0 and cfg["label_fraction"] is None
  assert os.path.getsize(run_dir / "barlow_twins" / "metrics.jsonl") > 0


def test_overfusion_rejects_unknown_loss(tmp_path):
  with pytest.raises(ValueError, match="unknown loss"):
    overfusion.run(_tiny("nope"), str(tmp_path), progress=False)


def test_overfusion_run_configs_are_valid_and_match_the_recipe():
  from tfjax.config import validate

  config = get_config("tiny")
  for name in overfusion.loss_names(config):
    for oar in (False, True):
      c = overfusion.run_config(config, name, oar, seed=3)
      validate(c, 1)
      assert c.loss == name and c.seed == 3
      assert c.backbone == "mlp" and c.embed_dim == 0
      assert tuple(c.backbone_kwargs.hidden) == (config.hidden, config.hidden)
      assert c.backbone_kwargs.out_features == 3 and c.backbone_kwargs.batch_norm
      assert c.optimizer == "adamw" and c.weight_decay == 0.0
      assert c.schedule == "constant" and c.warmup_steps == 0
      assert c.augment == "sign_flip_noise"
      assert c.num_steps % c.steps_per_call == 0  # no second compile at the end
      assert (c.oar_weight, c.label_fraction) == ((1.0, 0.1) if oar else (0.0, None))
  for arg in ("tiny", "quick", ""):
    get_config(arg)
  with pytest.raises(ValueError, match="unknown config argument"):
    get_config("huge")


def test_make_data_is_seeded_balanced_lines():
  config = get_config("tiny")
  a, b = overfusion.make_data(config, 0), overfusion.make_data(config, 0)
  np.testing.assert_array_equal(a["x_train"], b["x_train"])
  assert a["x_train"].shape == (config.n_train, 3)
  assert a["x_test"].shape == (config.n_test, 3)
  assert np.ptp(np.bincount(a["y_train"], minlength=3)) <= 1  # balanced
  # Each point lies near its class's line: small residual off the direction.
  d = a["directions"][a["y_train"]]
  x = a["x_train"]
  resid = x - (x * d).sum(1, keepdims=True) * d
  assert np.sqrt((resid**2).sum(1)).mean() < 2 * config.noise


@pytest.mark.slow
def test_collapse_search_tiny_writes_a_row_per_setting(tmp_path):
  c = get_config("search_tiny")
  rows = overfusion.run(c, str(tmp_path), progress=False)
  grid = overfusion.search_grid(c)
  assert len(grid) == 2 and {g["learning_rate"] for g in grid} == {0.1, 10.0}
  base = [r for r in rows if not r["run"].startswith("OAR-")]
  assert [r["learning_rate"] for r in base] == [0.1, 10.0]
  for r in base:
    if r["status"] == "ok":
      assert 0 <= r["variance"] <= 1 and r["rank95"] in (1, 2, 3)
      assert 0 <= r["knn"] <= 1
  # OAR reruns exactly the collapsed settings (at most max_oar_settings)
  collapsed = [r for r in base if overfusion.line_collapse(r)]
  assert len(rows) - len(base) == min(len(collapsed), 1)  # one (noise, width) pair
  for name in ("search.md", "search.json", "overfusion_search.png"):
    assert os.path.getsize(tmp_path / name) > 0
  assert "Searched: noise" in (tmp_path / "search.md").read_text()


def test_search_grid_rejects_bad_values():
  c = get_config("search_tiny")
  c.search.hidden = "8,wide"
  with pytest.raises(ValueError, match="search.hidden"):
    overfusion.search_grid(c)
