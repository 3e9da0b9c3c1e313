"""The fusion and downstream experiments run end to end at small sizes."""

import json

import pytest

from experiments import downstream, fusion
from experiments.configs.fusion import get_config as fusion_config


@pytest.mark.slow
def test_fusion_tiny_fuses_clusters(tmp_path):
  config = fusion_config("tiny")
  rows = fusion.run(config, str(tmp_path), progress=False)
  for name in (
    "fusion_heatmaps.png",
    "fusion_layers.png",
    "results.md",
    "results.json",
    "run/metrics.jsonl",
    "run/config.json",
  ):
    assert (tmp_path / name).stat().st_size > 0, name
  run_cfg = json.loads((tmp_path / "run" / "config.json").read_text())
  assert run_cfg["backbone"] == "identity" and run_cfg["num_views"] == 1
  last = config.head.num_layers
  trained = {r["layer"]: r for r in rows if r["model"] == "trained"}
  init = {r["layer"]: r for r in rows if r["model"] == "init"}
  assert set(trained) == set(range(1, last + 1)) | {"out"}
  for r in rows:
    if r["layer"] != "out":  # adjacency rows sum to one
      assert r["mass_within"] + r["mass_between"] == pytest.approx(1.0, abs=1e-4)
  # Even at this size the trained last layer attends more to its own cluster
  # than at init, and the fused features are less noisy than the input.
  assert trained[last]["mass_within"] > init[last]["mass_within"] + 0.15
  assert trained["out"]["noise_in"] < trained[1]["noise_in"] - 0.1


@pytest.mark.slow
def test_downstream_tiny_writes_merged_table(tmp_path):
  from experiments.configs.downstream import get_config

  rows = downstream.run(get_config("tiny"), str(tmp_path), progress=False)
  methods = [r["method"] for r in rows]
  assert methods[:4] == [
    "TransFusion (JSD), class targets",
    "SupCon, class targets",
    "SimCLR (InfoNCE), self-supervised",
    "TransFusion (JSD), self-supervised",
  ]
  assert all(0.0 <= r["knn"] <= 1.0 for r in rows)
  assert "| digits | raw inputs (no training) |" in (tmp_path / "results.md").read_text()
  assert (tmp_path / "downstream.png").stat().st_size > 0
  assert len(json.loads((tmp_path / "results.json").read_text())) == 6


def test_recipes_keep_their_augmentation_only_where_it_fits(capsys):
  from experiments.configs.downstream import get_config
  from experiments.runs import run_configs
  from tfjax.config import validate

  config = get_config("")
  assert config.runs.simclr.get("augment") is None  # the method's recipe
  digits = dict(run_configs(downstream.dataset_config(config, "digits")))  # images
  assert digits["simclr"].augment == "" and digits["transfusion_ssl"].augment == ""
  assert digits["simclr"].learning_rate == 4e-3  # the rest of the recipe
  out = capsys.readouterr().out
  assert (
    "run 'simclr': info_nce (self-supervised, image data): the recipe chosen on signal data sets"
  ) in out
  assert "(augment 'signal' is for signal data: the image default instead)" in out
  mnist1d = dict(run_configs(downstream.dataset_config(config, "mnist1d")))
  assert mnist1d["simclr"].augment == "signal" and mnist1d["supcon"].augment == ""
  for runs in (digits, mnist1d):  # every run is a valid config
    for c in runs.values():
      validate(c, 1)
