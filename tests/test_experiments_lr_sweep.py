"""Smoke test of experiments/lr_sweep.py on the offline subspaces_tiny data."""

import argparse
import json
import os

import numpy as np
import pytest

from experiments import lr_sweep


@pytest.mark.slow
def test_lr_sweep_tiny_writes_sane_results(tmp_path):
  rows = lr_sweep.main([
      "--tiny", "--dataset", "subspaces_tiny", "--losses", "info_nce",
      "--lrs", "0.01", "--batch", "30", "--steps", "20", "--eval-steps", "30",
      "--workdir", str(tmp_path)])
  for name in ("lr_sweep_accuracy.png", "lr_sweep_variance.png", "results.md",
               "results.json"):
    assert os.path.getsize(tmp_path / name) > 0, name
  assert [(r["loss"], r["oar"], r["lr"]) for r in rows] == [
      ("info_nce", "no", "0.01"), ("info_nce", "yes", "0.01")]
  with open(tmp_path / "results.json") as f:
    assert json.load(f) == rows
  for r in rows:
    assert r["status"] == "ok", r
    for key in ("finetune@0.1", "finetune@0.5", "finetune@1", "knn", "variance"):
      assert 0.0 <= r[key] <= 1.0 and np.isfinite(r[key]), (key, r)
    # Three separable clusters after a gentle lr: kNN well above chance (1/3).
    assert r["knn"] > 0.6, r
  # The OAR run trained with a 10 % labelled subset and weight 1.
  with open(tmp_path / "runs" / "info_nce_oar_lr0.01" / "config.json") as f:
    cfg = json.load(f)
  assert cfg["oar_weight"] == 1.0 and cfg["label_fraction"] == 0.1
  with open(tmp_path / "runs" / "info_nce_lr0.01" / "config.json") as f:
    cfg = json.load(f)
  assert cfg["oar_weight"] == 0.0 and cfg["label_fraction"] is None
  md = (tmp_path / "results.md").read_text()
  assert "0.315/0.407/0.438" in md  # InfoNCE reference of SPEC §7
  assert "0.686/0.694/0.701" in md  # OAR-InfoNCE reference of SPEC §7


def test_lr_grid_full_is_decades_1e7_to_1():
  args = argparse.Namespace(lrs=None, tiny=False, quick=False)
  np.testing.assert_allclose(lr_sweep.learning_rates(args),
                             [10.0 ** e for e in range(-7, 1)])
  args.quick = True
  grid = lr_sweep.learning_rates(args)
  assert len(grid) == 3 and min(grid) == pytest.approx(1e-3) and max(grid) == 1.0


def test_lr_sweep_rejects_unknown_loss(tmp_path):
  with pytest.raises(ValueError, match="nope"):
    lr_sweep.main(["--tiny", "--losses", "nope", "--workdir", str(tmp_path)])
