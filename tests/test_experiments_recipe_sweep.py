"""experiments/recipe_sweep.py: the grids, the selection rule, and the tiny sweep end to end."""

import json
import os

import pytest

from experiments import recipe_sweep, runs
from experiments.configs.recipe_sweep import get_config

METHODS = ("transfusion", "supcon", "simclr", "transfusion_ssl")


def test_full_grid_is_the_protocol():
  c = get_config("")
  assert c.validation_fraction == 0.2 and c.dataset == "mnist1d"
  assert c.eval.linear_steps == 0 and c.eval.finetune_fractions == ()
  assert not c.eval.head_knn and not c.write_plots and c.steps_per_call == 1
  assert recipe_sweep.method_names(c) == list(METHODS)
  sizes = {m: [len(recipe_sweep.stage_grid(c, m, s)) for s in range(4)] for m in METHODS}
  assert sizes == {
    "transfusion": [8, 3, 6, 3],
    "supcon": [8, 3, 3, 3],
    "simclr": [8, 3, 3, 3],
    "transfusion_ssl": [8, 3, 8, 3],
  }
  aug = recipe_sweep.stage_grid(c, "simclr", 0)
  assert {"augment": "signal", "augment_strength": 1.0} in aug
  assert recipe_sweep.setting_label(aug[-1]) == "signal 1"
  ssl = recipe_sweep.stage_grid(c, "transfusion_ssl", 2)
  assert {
    "head.final_projection": "none",
    "head.activation": "square",
    "head.fuse_within_view": True,
    "head.num_layers": 3,
  } in ssl
  # The pre-sweep defaults are today's default.py values.
  assert recipe_sweep.default_recipe(c, "transfusion") == {
    "augment": "vector",
    "augment_strength": 1.0,
    "learning_rate": 2e-3,
    "head.num_layers": 3,
    "head.final_projection": "learned",
    "head.activation": "relu",
    "head.fuse_within_view": False,
    "num_steps": 400,
  }
  assert recipe_sweep.default_recipe(c, "simclr")["temperature"] == 0.1
  assert c.transfer.dataset == "mnist1d_shifted" and c.transfer.seeds == 3
  # The other registered methods can be tuned too: a temperature stage where
  # the registry says the method reads one, none otherwise.
  assert {m: len(recipe_sweep.stage_grid(c, m, 2)) for m in ("dcl", "barlow_twins", "vicreg")} == {
    "dcl": 3,
    "barlow_twins": 0,
    "vicreg": 0,
  }


def test_every_setting_is_a_valid_training_config():
  from tfjax.config import validate

  for arg in ("", "tiny"):
    c = get_config(arg)
    for m in METHODS:
      for stage in range(4):
        for setting in recipe_sweep.stage_grid(c, m, stage):
          recipe = {**recipe_sweep.default_recipe(c, m), **setting}
          t = runs.training_config(c, m, recipe)
          validate(t, 1)
          assert t.validation_fraction == 0.2
          for key, value in recipe.items():
            node = t
            for part in key.split("."):
              node = getattr(node, part)
            assert node == value, (m, key)
  ssl = runs.training_config(get_config(""), "transfusion_ssl", {})
  assert ssl.loss == "jsd" and ssl.label_fraction is None and not ssl.labels_in_loss


def test_choose_breaks_ties_to_the_incumbent_then_grid_order():
  grid = [{"a": 1}, {"a": 2}, {"a": 3}]
  assert recipe_sweep.choose(grid, [0.5, 0.6, 0.7], {"a": 2}, 0.005) == 2
  assert recipe_sweep.choose(grid, [0.5, 0.698, 0.7], {"a": 2}, 0.005) == 1
  assert recipe_sweep.choose(grid, [0.697, 0.6, 0.7], {"a": 9}, 0.005) == 0
  assert recipe_sweep.choose(grid, [0.69, 0.6, 0.7], {"a": 9}, 0.005) == 2


@pytest.mark.slow
def test_tiny_sweep_chooses_on_validation_only(tmp_path):
  c = get_config("tiny")
  # Two of the four methods (one with the head, one without) and one transfer
  # seed keep this under a minute; the full grid is checked above.
  tested = ("transfusion", "simclr")
  c.methods = ",".join(tested)
  c.transfer.seeds = 1
  c.transfer.chosen_at_default_steps = False
  summary = recipe_sweep.run(c, str(tmp_path), progress=False)
  for name in ("results.md", "results.json", "chosen.json", "recipe_sweep.png"):
    assert os.path.getsize(tmp_path / name) > 0, name
  runs = summary["runs"]
  assert runs and {r["evaluated_on"] for r in runs} == {"validation"}
  for r in runs:
    assert 0.0 <= r["knn"] <= 1.0
  # Every sweep run's own results say it was scored on the held-out split.
  for path in (tmp_path / "runs").rglob("results.json"):
    assert json.loads(path.read_text())["evaluated_on"] == "validation", path
  for path in (tmp_path / "transfer").rglob("results.json"):
    assert json.loads(path.read_text())["evaluated_on"] == "test", path
  with open(tmp_path / "chosen.json") as f:
    chosen = json.load(f)
  assert set(chosen) == set(tested)
  for m in tested:
    recipe = chosen[m]
    # Exactly one chosen setting per stage, and its values are the recipe's.
    for stage in range(1, 5):
      picked = [r for r in runs if r["method"] == m and r["stage"] == stage and r["chosen"]]
      assert len(picked) == 1, (m, stage)
    grids = [recipe_sweep.stage_grid(c, m, s) for s in range(4)]
    for grid in grids:
      assert {k: recipe[k] for k in grid[0]} in grid, (m, grid)
    for key, value in dict(c.runs[m]).items():
      assert recipe[key] == value
  assert recipe["augment_strength"] in c.grid.augment_strength
  assert chosen["simclr"]["temperature"] in c.grid.temperature
  assert chosen["transfusion"]["num_steps"] in c.grid.num_steps
  # Transfer check: chosen and default per method, then the random baseline.
  transfer = summary["transfer"]
  expected = []
  for m in tested:
    expected += [(m, "chosen"), (m, "default")]
  assert [(r["method"], r["recipe"]) for r in transfer] == expected + [("random_init", "—")]
  for r in transfer:
    assert r["evaluated_on"] == "test" and r["seeds"] == c.transfer.seeds
    assert 0.0 <= r["knn"] <= 1.0 and 0.0 <= r["linear"] <= 1.0
    assert "knn_std" in r and "linear_std" in r
  md = (tmp_path / "results.md").read_text()
  assert "Transfer check" in md and "SPEC" not in md


def test_sweep_without_transfer_check(tmp_path):
  """``transfer.seeds = 0`` chooses the recipes and trains nothing on the transfer data."""
  c = get_config("tiny")
  c.methods = "simclr"
  c.transfer.seeds = 0
  c.random_baseline = False
  for stage, values in dict(augment_strength=(1.0,), temperature=(0.1,)).items():
    c.grid[stage] = values
  summary = recipe_sweep.run(c, str(tmp_path), progress=False)
  assert summary["transfer"] == [] and set(summary["chosen"]) == {"simclr"}
  assert not (tmp_path / "transfer").exists()
  assert "No transfer check (transfer.seeds = 0)." in (tmp_path / "results.md").read_text()
  c.transfer.seeds = -1
  with pytest.raises(ValueError, match=r"transfer.seeds must be an integer >= 1"):
    recipe_sweep.run(c, str(tmp_path / "again"), progress=False)
