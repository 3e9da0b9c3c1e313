"""experiments/head_ablation.py: the grid, the softmax comparison activations,
the margin over the random baseline, and the tiny ablation end to end."""

import json
import math
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import head_ablation
from experiments.configs.head_ablation import get_config
from experiments.runs import training_config
from tfjax.attention import ACTIVATIONS, adjacency


@pytest.fixture
def clean_activations():
  """Removes the activations a test registers from the global registry."""
  before = set(ACTIVATIONS)
  yield
  for name in set(ACTIVATIONS) - before:
    del ACTIVATIONS[name]


def test_default_grid_is_the_protocol():
  c = get_config("")
  assert c.validation_fraction == 0.2 and c.dataset == "mnist1d"
  assert c.backbone == "cnn1d" and c.embed_dim == 64 and c.batch_size == 128
  assert c.steps_per_call == 1 and c.eval.linear_steps == 300
  assert c.eval.finetune_fractions == () and c.eval.head_knn and c.seeds == 3
  assert head_ablation.target_names(c) == ["transfusion", "transfusion_ssl"]
  for target in ("transfusion", "transfusion_ssl"):
    grid = head_ablation.relu_grid(c, target)
    assert [(r["head.final_projection"], r["head.num_layers"]) for r in grid] == [
      (p, n) for p in ("learned", "tied", "norm", "none") for n in (1, 3)
    ]
    assert {r["head.activation"] for r in grid} == {"relu"}
  t = training_config(c, "transfusion", head_ablation.relu_grid(c, "transfusion")[0])
  assert (
    t.loss,
    t.label_fraction,
    t.labels_in_loss,
    t.augment_strength,
    t.learning_rate,
    t.num_steps,
  ) == ("jsd", 1.0, True, 0.1, 2e-3, 800)
  s = training_config(c, "transfusion_ssl", head_ablation.relu_grid(c, "transfusion_ssl")[0])
  assert (
    s.loss,
    s.label_fraction,
    s.labels_in_loss,
    s.augment_strength,
    s.learning_rate,
    s.num_steps,
  ) == ("jsd", None, False, 0.1, 1e-3, 1600)
  assert c.budget.target == "transfusion_ssl" and tuple(c.budget.steps) == (4000,)
  with pytest.raises(ValueError, match="unknown config argument"):
    get_config("huge")


def test_every_setting_is_a_valid_training_config(clean_activations):
  from tfjax.config import validate

  for arg in ("", "quick", "tiny"):
    c = get_config(arg)
    for act in c.comparison_activations:
      head_ablation.register_activation(act)
    for target in head_ablation.target_names(c):
      for recipe in head_ablation.relu_grid(c, target):
        for act in ("relu", *c.comparison_activations):
          t = training_config(c, target, {**recipe, "head.activation": act})
          validate(t, 1)
          assert t.validation_fraction == 0.2 and t.head.activation == act


def test_exp_activations_are_softmax_over_cosines(clean_activations):
  jitted = jax.jit(adjacency, static_argnames="activation")
  q = jax.random.normal(jax.random.key(0), (7, 5))
  k = jax.random.normal(jax.random.key(1), (9, 5))
  q64, k64 = np.asarray(q, np.float64), np.asarray(k, np.float64)
  cos = (q64 / np.linalg.norm(q64, axis=1, keepdims=True)) @ (
    k64 / np.linalg.norm(k64, axis=1, keepdims=True)
  ).T
  for name, temperature in (("exp", 1.0), ("exp_t0.1", 0.1), ("exp_t2", 2.0)):
    assert head_ablation.exp_temperature(name) == temperature
    head_ablation.register_activation(name)
    # float64 reference: softmax of cos / T over each row, own entry excluded
    logits = cos / temperature
    logits[np.arange(7), np.arange(7)] = -np.inf
    want = np.exp(logits - logits.max(1, keepdims=True))
    want /= want.sum(1, keepdims=True)
    for fn in (adjacency, jitted):
      a = fn(q, k, activation=name)
      chex.assert_shape(a, (7, 9))
      chex.assert_type(a, jnp.float32)
      np.testing.assert_allclose(a, want, rtol=2e-5, atol=1e-7)


def test_register_activation_keeps_same_and_refuses_other(clean_activations):
  f = head_ablation.register_activation("exp")
  assert head_ablation.register_activation("exp") is f  # idempotent
  ACTIVATIONS["exp_t0.5"] = jnp.square  # someone else's
  with pytest.raises(ValueError, match="already registered"):
    head_ablation.register_activation("exp_t0.5")
  for bad in ("exp_t0", "exp_t-1", "exp_tx", "softmax"):
    with pytest.raises(ValueError, match="use 'exp' or 'exp_tT'"):
      head_ablation.register_activation(bad)


def test_best_and_margin():
  rows = [{"knn": 0.7}, {"knn": 0.9}, {"knn": 0.9}, {"knn": 0.8}]
  assert head_ablation.best(rows) == [rows[1]]  # first of a tie
  assert head_ablation.best(rows, 3) == [rows[1], rows[2], rows[3]]
  base = {"knn": 0.70, "knn_std": 0.03}
  row = {"knn": 0.80, "knn_std": 0.04}
  assert head_ablation.margin_sigma(row, base) == pytest.approx(0.10 / 0.05)
  assert head_ablation.margin_sigma({"knn": 0.6}, {"knn": 0.7}) == -math.inf
  assert head_ablation.margin_sigma({"knn": 0.7}, {"knn": 0.7}) == 0.0


@pytest.mark.slow
def test_tiny_ablation_end_to_end(tmp_path, clean_activations):
  c = get_config("tiny")
  summary = head_ablation.run(c, str(tmp_path), progress=False)
  for name in ("results.md", "results.json", "head_ablation.png"):
    assert os.path.getsize(tmp_path / name) > 0, name
  with open(tmp_path / "results.json") as f:
    assert json.load(f)["best_relu"] == summary["best_relu"]
  rows = summary["rows"]
  targets = ["transfusion", "transfusion_ssl"]
  relu = [r for r in rows if r["part"] == "relu"]
  assert [(r["target"], r["projection"], r["layers"]) for r in relu] == [
    (t, p, n) for t in targets for p in c.projections for n in c.layers
  ]
  for r in rows + summary["budget"]:
    assert r["evaluated_on"] == "validation" and r["seeds"] == c.seeds
    for key in ("knn", "linear", "knn_head"):
      assert 0.0 <= r[key] <= 1.0 and r[f"{key}_std"] >= 0.0, (r["form"], key)
    assert 0.0 <= r["uniform_rows"] <= 1.0
    assert 0.0 <= r["final_loss"] <= math.log(2) + 1e-6  # JSD is ≤ log 2
    assert "margin_sigma" in r
  # The comparison runs at each target's best ReLU form.
  for t in targets:
    grid = [r for r in relu if r["target"] == t]
    top = max(grid, key=lambda r: r["knn"])
    assert summary["best_relu"][t] == head_ablation.best(grid)[0]["form"]
    assert top["knn"] == head_ablation.best(grid)[0]["knn"]
    comp = [r for r in rows if r["target"] == t and r["part"] == "comparison"]
    assert [r["activation"] for r in comp] == list(c.comparison_activations)
    assert {(r["projection"], r["layers"]) for r in comp} == {
      (head_ablation.best(grid)[0]["projection"], head_ablation.best(grid)[0]["layers"])
    }
  # Budget: the best self-supervised form at the recipe's steps, then longer.
  budget = summary["budget"]
  assert [r["steps"] for r in budget] == [c.runs.transfusion_ssl.num_steps, 20]
  assert len({r["form"] for r in budget}) == 1
  base = summary["random_baseline"]
  assert base["seeds"] == c.seeds and 0.0 <= base["knn"] <= 1.0
  assert 0.0 <= base["linear"] <= 1.0
  # Every run's own results say it was scored on the held-out split.
  paths = list((tmp_path / "runs").rglob("results.json"))
  comparisons = len(targets) * len(c.comparison_activations)
  assert len(paths) == c.seeds * (len(relu) + comparisons + 1)  # + 1 budget
  for path in paths:
    assert json.loads(path.read_text())["evaluated_on"] == "validation", path
  md = (tmp_path / "results.md").read_text()
  assert "comparison" in md and "Budget" in md and "SPEC" not in md
  # A rerun reuses every finished run.
  again = head_ablation.run(c, str(tmp_path), progress=False)
  assert [r["knn"] for r in again["rows"]] == [r["knn"] for r in rows]
