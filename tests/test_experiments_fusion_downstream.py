"""The fusion and downstream experiments run end to end at small sizes."""

import json

import pytest

from experiments import downstream, fusion


@pytest.mark.slow
def test_fusion_quick_fuses_clusters(tmp_path):
  rows = fusion.main(["--quick", "--workdir", str(tmp_path)])
  for name in ("fusion_heatmaps.png", "fusion_layers.png", "results.md"):
    assert (tmp_path / name).stat().st_size > 0
  trained = {r["layer"]: r for r in rows if r["model"] == "trained"}
  init = {r["layer"]: r for r in rows if r["model"] == "init"}
  # The trained last layer concentrates on its own cluster, far above init,
  # and the fused features are less noisy than the input.
  assert trained[5]["mass_within"] > 0.7 > init[5]["mass_within"] + 0.3
  assert trained["out"]["noise_in"] < 0.6 * trained[1]["noise_in"]


@pytest.mark.slow
def test_downstream_tiny_writes_merged_table(tmp_path):
  rows = downstream.main(["--datasets", "digits", "--quick", "--workdir", str(tmp_path),
                          "--set", "num_steps=12", "--set", "warmup_steps=2",
                          "--set", "batch_size=32", "--set", "eval.linear_steps=0",
                          "--set", "eval.finetune_fractions=()", "--set", "eval.knn_k=5"])
  methods = [r["method"] for r in rows]
  assert methods[:4] == ["TransFusion (JSD), 100% labels", "SupCon, 100% labels",
                         "SimCLR (InfoNCE)", "TransFusion (JSD)"]
  assert all(0.0 <= r["knn"] <= 1.0 for r in rows)
  assert "| digits | raw inputs (no training) |" in (tmp_path / "results.md").read_text()
  assert (tmp_path / "downstream.png").stat().st_size > 0
  assert len(json.loads((tmp_path / "results.json").read_text())) == 6
