"""experiments/report.py and experiments/runs.py: what the experiments share."""

import numpy as np
import pytest

from experiments import report, runs
from experiments.configs.default import get_config


def test_mean_std_matches_numpy_over_seeds():
  rng = np.random.default_rng()
  values = rng.normal(size=(4, 2))
  per_seed = [{"knn": float(a), "linear": float(b), "evaluated_on": "test"} for a, b in values]
  per_seed[2]["linear"] = None  # one seed without it: left out
  for ddof in (0, 1):
    out = report.mean_std(per_seed, ddof=ddof)
    assert set(out) == {"knn", "knn_std"}
    np.testing.assert_allclose(out["knn"], values[:, 0].mean(), rtol=1e-12)
    np.testing.assert_allclose(out["knn_std"], values[:, 0].std(ddof=ddof), rtol=1e-12)
  assert report.mean_std(per_seed[:1], ("knn",)) == {"knn": per_seed[0]["knn"], "knn_std": 0.0}


def test_one_mean_std_format():
  assert report.pm(0.98765, 0.00432) == "0.988 ± 0.004"
  assert report.pm(0.5) == "0.500" and report.pm(None) == "—"
  row = {"knn": 0.9, "knn_std": 0.01, "linear": 0.8, "seeds": 3}
  assert report.cell(row, "knn") == "0.900 ± 0.010"
  assert report.cell(row, "linear") == "0.800"  # no spread recorded
  assert report.cell({**row, "seeds": 1}, "knn") == "0.900"
  assert report.cell(row, "missing") == ""
  table = report.markdown_table([report.formatted(row)], ["knn", "linear", "seeds"])
  assert table.splitlines()[2] == "| 0.900 ± 0.010 | 0.800 | 3 |"


def test_names_refuse_unknown_and_repeated_runs():
  defined = {"a": 1, "b": 2}
  assert runs.names(" b, a ", defined, "compare") == ["b", "a"]
  with pytest.raises(ValueError, match=r"compare names unknown runs \['c'\]"):
    runs.names("a,c", defined, "compare")
  with pytest.raises(ValueError, match="compare names run 'a' twice"):
    runs.names("a,b,a", defined, "compare")


def test_seeds_count_from_the_config_seed():
  config = get_config("quick")
  config.seed, config.seeds = 3, 2
  assert runs.seeds(config) == [3, 4]
  assert runs.seeds(config, "transfer.seeds", 3) == [3, 4, 5]
  for bad in (0, -1, 1.5, True):
    with pytest.raises(ValueError, match="seeds must be an integer >= 1"):
      runs.seeds(config, count=bad)


def test_recipe_keys_name_the_run_directories_of_earlier_work():
  """A rerun finds the runs it holds: the directory names stay as they are."""
  form = {
    "head.final_projection": "none",
    "head.num_layers": 1,
    "head.activation": "relu",
    "num_steps": 800,
  }
  assert runs.recipe_key(form) == "L1_projnone_actrelu_steps800"
  recipe = {
    "num_steps": 1600,
    "learning_rate": 4e-3,
    "augment": "signal",
    "augment_strength": 0.5,
    "head.fuse_within_view": True,
  }
  assert runs.recipe_key(recipe) == "signal_aug0.5_lr0.004_within1_steps1600"


def test_with_fields_sets_dotted_fields_on_a_copy():
  config = get_config("quick")
  c = runs.with_fields(config, {"eval.head_knn": False, "head.num_layers": 2}, seed=7)
  assert (c.eval.head_knn, c.head.num_layers, c.seed) == (False, 2, 7)
  assert config.eval.head_knn and config.seed != 7
