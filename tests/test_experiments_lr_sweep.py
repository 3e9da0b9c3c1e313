"""Smoke tests of experiments/lr_sweep.py at its tiny size (offline subspaces_tiny data)."""

import json
import os
import types

import numpy as np
import pytest

from experiments import lr_sweep
from experiments.configs.lr_sweep import get_config


@pytest.mark.slow
def test_lr_sweep_tiny_writes_sane_results(tmp_path):
  c = get_config("tiny")
  c.lrs = "0.01"
  rows = lr_sweep.run(c, str(tmp_path), progress=False)
  for name in ("lr_sweep_accuracy.png", "lr_sweep_variance.png", "results.md",
               "results.json"):
    assert os.path.getsize(tmp_path / name) > 0, name
  assert [(r["loss"], r["oar"], r["lr"]) for r in rows] == [
      ("info_nce", "no", "0.01"), ("info_nce", "yes", "0.01"), ("", "", "")]
  assert rows[0]["method"] == "SimCLR (InfoNCE)"  # the registry's display name
  assert rows[1]["method"].startswith("OAR-SimCLR (InfoNCE)")
  with open(tmp_path / "results.json") as f:
    assert json.load(f) == rows
  trained, baseline = rows[:2], rows[2]
  for r in trained:
    assert r["status"] == "ok", r
    for key in ("finetune@0.1", "finetune@0.5", "finetune@1", "knn", "variance"):
      assert 0.0 <= r[key] <= 1.0 and np.isfinite(r[key]), (key, r)
    # Three separable clusters after a gentle lr: kNN well above chance (1/3).
    assert r["knn"] > 0.6, r
  # The fair random baseline, once per sweep: the random-init backbone.
  assert baseline["status"] == "no training"
  assert baseline["method"].startswith("random-init mlp")
  for key in ("finetune@0.1", "finetune@0.5", "finetune@1", "knn", "feature_variance"):
    assert 0.0 <= baseline[key] <= 1.0, (key, baseline)
  # The OAR run trained with a 10 % labelled subset and weight 1.
  with open(tmp_path / "runs" / "oar_info_nce_lr0.01" / "config.json") as f:
    cfg = json.load(f)
  assert cfg["oar_weight"] == 1.0 and cfg["label_fraction"] == 0.1
  with open(tmp_path / "runs" / "info_nce_lr0.01" / "config.json") as f:
    cfg = json.load(f)
  assert cfg["oar_weight"] == 0.0 and cfg["label_fraction"] is None
  assert cfg["optimizer"] == "sgd" and cfg["learning_rate"] == 0.01
  md = (tmp_path / "results.md").read_text()
  assert "0.315/0.407/0.438" in md  # InfoNCE in the CLOA draft's Table 3
  assert "0.686/0.694/0.701" in md  # OAR-InfoNCE in the CLOA draft's Table 3
  assert "random-init mlp" in md and "SPEC" not in md


def test_lr_grid_sizes():
  np.testing.assert_allclose(lr_sweep.learning_rates(get_config("")),
                             [10.0 ** e for e in range(-7, 1)])
  grid = lr_sweep.learning_rates(get_config("quick"))
  assert len(grid) == 3 and min(grid) == pytest.approx(1e-3)
  assert max(grid) == 1.0 and grid[1] == pytest.approx(10 ** -1.5, rel=1e-5)
  # A sequence works too (a config file may set one).
  assert lr_sweep.learning_rates(types.SimpleNamespace(lrs=(0.1, 0.3))) == [0.1, 0.3]
  c = get_config("tiny")
  c.lrs = "0.1,-1"
  with pytest.raises(ValueError, match="positive"):
    lr_sweep.learning_rates(c)


def test_config_arg_picks_size_and_dataset():
  c = get_config("quick,mnist1d")
  assert c.dataset == "mnist1d" and c.backbone == "cnn1d" and c.num_steps == 200
  assert get_config("").dataset == "digits" and get_config("").backbone == "small_cnn"
  assert get_config("tiny").dataset == "subspaces_tiny"
  tiny_digits = get_config("tiny,digits")
  assert tiny_digits.max_train_examples == 512 and tiny_digits.backbone == "small_cnn"
  with pytest.raises(ValueError, match="unknown config argument"):
    get_config("huge")


def test_run_configs_are_valid():
  from tfjax.state import validate_config
  for arg in ("tiny", "quick", ""):
    config = get_config(arg)
    for loss in lr_sweep.loss_names(config):
      for oar in (False, True):
        for lr in lr_sweep.learning_rates(config):
          c = lr_sweep.run_config(config, loss, oar, lr)
          validate_config(c, 1)
          assert c.learning_rate == lr and c.loss == loss
          assert (c.oar_weight, c.label_fraction) == ((1.0, 0.1) if oar else (0.0, None))


def test_lr_sweep_rejects_unknown_loss(tmp_path):
  c = get_config("tiny")
  c.losses = "nope"
  with pytest.raises(ValueError, match="nope"):
    lr_sweep.run(c, str(tmp_path), progress=False)
