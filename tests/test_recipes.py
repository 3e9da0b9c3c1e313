"""Method recipes: unset fields take the method's recipe, set ones are kept, and it is said."""

import json

import numpy as np
import pytest

from tfjax import evaluation, methods, recipes, train
from tfjax.config import base_config
from tfjax.methods import FALLBACK, FIELDS, Recipe


def unset_fields(c):
  return [f for f in FIELDS if recipes._get(c, f) is None]


def test_base_config_leaves_every_recipe_field_unset():
  assert unset_fields(base_config()) == list(FIELDS)


@pytest.mark.parametrize("name", methods.names()[:7])
def test_every_builtin_method_has_a_validated_recipe(name):
  method = methods.get(name)
  assert any(r.kind == "signal" and r.source for r in method.recipes), name
  for r in method.recipes:
    assert set(r.fields) <= set(FIELDS)
    assert {"learning_rate", "augment_strength", "num_steps"} <= set(r.fields)
    assert r.labels <= method.accepts_labels


def test_resolve_fills_only_unset_fields_and_never_overrides():
  rng = np.random.default_rng()
  c = base_config()
  c.dataset = "mnist1d"
  chosen = sorted(rng.choice(list(FIELDS), size=3, replace=False))
  mine = {
    "augment": "vector",
    "augment_strength": 0.7,
    "learning_rate": 3e-4,
    "temperature": 0.37,
    "num_steps": 123,
    "head.num_layers": 4,
    "head.final_projection": "tied",
    "head.activation": "square",
  }
  for f in chosen:
    recipes._set(c, f, mine[f])
  before = json.loads(c.to_json())
  out, filled = recipes.resolve(c, "signal")
  assert json.loads(c.to_json()) == before  # the input is not changed
  assert sorted(filled) == sorted(set(FIELDS) - set(chosen))
  ssl = recipes.recipe_for(methods.get("jsd"), False, "signal")
  for f in FIELDS:
    want = mine[f] if f in chosen else ssl.fields.get(f, FALLBACK[f])
    assert recipes._get(out, f) == want, f
  assert recipes.resolve(out, "signal")[1] == {}  # resolving twice: nothing left
  # Everything else is the input's.
  a, b = json.loads(c.to_json()), json.loads(out.to_json())
  for f in FIELDS:
    for d in (a, b):
      *path, leaf = f.split(".")
      node = d
      for p in path:
        node = node[p]
      node.pop(leaf)
  assert a == b


def test_resolve_picks_the_recipe_of_the_use_of_labels():
  c = base_config()
  c.dataset, c.loss = "mnist1d", "jsd"
  ssl = recipes.resolve(c)[0]
  c.label_fraction, c.labels_in_loss = 0.1, True
  cls = recipes.resolve(c)[0]
  assert (ssl.head.final_projection, ssl.augment, ssl.num_steps) == ("none", "signal", 1600)
  assert (cls.head.final_projection, cls.augment, cls.num_steps) == ("learned", "", 800)
  c.labels_in_loss = False  # labels known but not in the target
  assert recipes.resolve(c)[0].head.final_projection == "none"


def test_the_line_says_method_use_kind_and_values():
  c = base_config()
  c.dataset, c.learning_rate = "mnist1d", 1e-3
  out, filled = recipes.resolve(c, "signal")
  line = recipes.describe(c, filled, "signal")
  assert line.startswith("jsd (self-supervised, signal data): recipe sets ")
  assert "augment='signal'" in line and "num_steps=1600" in line
  assert "head.final_projection='none'" in line
  assert "learning_rate" not in line  # the user's value, not filled
  assert "not read by this method: temperature=0.1" in line
  assert "\n" not in line
  assert recipes.describe(out, {}, "signal") == ""
  c.loss = "deep_fusion"  # its head reads deep_fusion.*, not head.*
  line = recipes.describe(c, recipes.resolve(c, "signal")[1], "signal")
  read, unread = line.split("; not read by this method: ")
  assert "temperature=" in read and "head." not in read
  assert "head.num_layers=" in unread


def test_train_and_evaluate_says_it_once_and_remembers_the_resolved_values(tmp_path, capsys):
  c = base_config()
  c.dataset, c.loss = "subspaces_tiny", "info_nce"
  c.backbone, c.backbone_kwargs = "mlp", {"hidden": (16,), "out_features": 12}
  c.embed_dim, c.projector_hidden, c.batch_size = 8, (16,), 16
  c.num_steps, c.warmup_steps, c.log_every, c.checkpoint_every = 2, 0, 1, 2
  c.eval.linear_steps, c.eval.finetune_fractions, c.eval.knn_k = 0, (), 3
  c.write_plots, c.num_devices = False, 1
  train.train_and_evaluate(c, str(tmp_path), progress=False)
  lines = [l for l in capsys.readouterr().out.splitlines() if "info_nce (" in l]
  assert len(lines) == 1
  assert lines[0].startswith(
    "info_nce (self-supervised, vector data): the recipe chosen on signal data sets "
  )
  assert "augment=''" in lines[0] and "'signal' is for signal data" in lines[0]
  saved = json.loads((tmp_path / "config.json").read_text())
  recipe = recipes.recipe_for(methods.get("info_nce"), False, "vector").fields
  assert saved["learning_rate"] == recipe["learning_rate"]
  assert saved["temperature"] == recipe["temperature"]
  assert saved["augment"] == "" and saved["num_steps"] == 2  # set by the user
  assert None not in [saved[f] for f in FIELDS if "." not in f]


def test_an_unknown_kind_keeps_the_recipe_but_not_its_augmentation():
  c = base_config()
  c.dataset = "no_such_dataset"
  out, filled = recipes.resolve(c)
  signal = recipes.recipe_for(methods.get("jsd"), False, "signal").fields
  assert out.augment == "" and out.learning_rate == signal["learning_rate"]
  line = recipes.describe(c, filled)
  assert line.startswith(
    "jsd (self-supervised, unknown kind of data): the recipe chosen on signal data sets"
  )
  # A recipe whose augmentation fits the other kind keeps it.
  c.dataset = "digits"
  c.label_fraction, c.labels_in_loss = 1.0, True
  out, _ = recipes.resolve(c)
  assert out.augment == "" and out.augment_strength == 0.1


def test_a_method_without_a_recipe_gets_the_fallback_and_says_so():
  methods.register(methods.Method("toy_norecipe", "Toy", lambda inputs: 0.0, num_views=2))
  try:
    c = base_config()
    c.dataset, c.loss = "mnist1d", "toy_norecipe"
    out, filled = recipes.resolve(c)
    assert filled == dict(FALLBACK)
    assert (
      "toy_norecipe (self-supervised, signal data): no validated recipe; "
      "library fallback sets" in recipes.describe(c, filled)
    )
  finally:
    methods.unregister("toy_norecipe")


def test_recipes_refuse_unknown_fields_and_labels_the_method_cannot_use():
  with pytest.raises(ValueError, match=r"recipe sets fields \['lr'\] that are not recipe fields"):
    Recipe(False, "signal", {"lr": 1e-3})
  with pytest.raises(ValueError, match="class-target recipe but does not accept labels"):
    methods.Method(
      "bad", "Bad", lambda inputs: 0.0, recipes=(Recipe(True, "signal", {"learning_rate": 1e-3}),)
    )


# The main job's runs, field by field, as docs/recipes.md chose them (first
# sweep: class targets; second: SimCLR; third: self-supervised TransFusion):
# the registry must give exactly these, so the main job's numbers stay.
MAIN_JOB_RUNS = {
  "transfusion": {
    "loss": "jsd",
    "label_fraction": 1.0,
    "labels_in_loss": True,
    "augment": "",
    "augment_strength": 0.1,
    "learning_rate": 2e-3,
    "temperature": 0.1,
    "num_steps": 800,
    "head.num_layers": 1,
    "head.final_projection": "learned",
    "head.activation": "relu",
  },
  "supcon": {
    "loss": "supcon",
    "label_fraction": 1.0,
    "labels_in_loss": True,
    "augment": "",
    "augment_strength": 0.1,
    "learning_rate": 4e-3,
    "temperature": 0.1,
    "num_steps": 800,
    "head.num_layers": 1,
    "head.final_projection": "learned",
    "head.activation": "relu",
  },
  "simclr": {
    "loss": "info_nce",
    "label_fraction": None,
    "labels_in_loss": False,
    "augment": "signal",
    "augment_strength": 0.5,
    "learning_rate": 4e-3,
    "temperature": 0.2,
    "num_steps": 1600,
    "head.num_layers": 1,
    "head.final_projection": "learned",
    "head.activation": "relu",
  },
  "transfusion_ssl": {
    "loss": "jsd",
    "label_fraction": None,
    "labels_in_loss": False,
    "augment": "signal",
    "augment_strength": 0.5,
    "learning_rate": 4e-3,
    "temperature": 0.1,
    "num_steps": 1600,
    "head.num_layers": 1,
    "head.final_projection": "none",
    "head.activation": "relu",
  },
}
MAIN_JOB_SHARED = {
  "dataset": "mnist1d",
  "backbone": "cnn1d",
  "backbone_kwargs": {"out_features": 128},
  "embed_dim": 64,
  "batch_size": 128,
  "warmup_steps": 40,
  "log_every": 50,
  "checkpoint_every": 400,
  "eval.linear_steps": 300,
  "eval.finetune_fractions": (0.1, 1.0),
  "eval.finetune_steps": 300,
}


def test_main_job_runs_resolve_to_exactly_the_chosen_recipes(capsys):
  from experiments.configs.default import get_config
  from experiments.runs import run_configs
  from tfjax.rerun import config_fields

  runs = dict(run_configs(get_config()))
  assert list(runs) == list(MAIN_JOB_RUNS)
  for name, fields in MAIN_JOB_RUNS.items():
    want = base_config()
    for key, value in {**MAIN_JOB_SHARED, **fields}.items():
      recipes._set(want, key, value)
    got = config_fields(runs[name])
    assert got == config_fields(want), name
  out = capsys.readouterr().out
  assert out.count("\n") == 4  # one line per run
  assert (
    "run 'transfusion_ssl': jsd (self-supervised, signal data): recipe sets "
    "augment='signal', augment_strength=0.5, learning_rate=0.004"
  ) in out


def test_main_job_offers_deep_fusion_with_its_chosen_recipe():
  """``--config.compare=deep_fusion``: the paper's v2 head, self-supervised,
  with the recipe docs/deep_fusion.md chose on validation data."""
  from experiments.configs.default import get_config
  from experiments.runs import run_configs

  c = get_config()
  c.compare = "deep_fusion"
  ((name, r),) = run_configs(c)
  assert name == "deep_fusion" and r.loss == "deep_fusion" and not r.labels_in_loss
  got = (r.augment, r.augment_strength, r.learning_rate, r.temperature, r.num_steps)
  assert got == ("signal", 0.5, 1e-3, 0.5, 1600)


def test_main_job_runs_keep_what_the_command_line_sets():
  from experiments.configs.default import get_config
  from experiments.runs import run_configs

  c = get_config("quick")
  c.runs.supcon.num_steps = 7  # --config.runs.supcon.num_steps=7
  c.learning_rate = 1e-4  # --config.learning_rate=1e-4: every run
  runs = dict(run_configs(c))
  assert runs["supcon"].num_steps == 7 and runs["transfusion"].num_steps == 800
  assert {r.learning_rate for r in runs.values()} == {1e-4}
  assert runs["simclr"].temperature == 0.2


# ----------------------------------------------------------------------------
# Every method at its defaults learns: beats the random backbone on MNIST-1D.
# ----------------------------------------------------------------------------
def _defaults_on_mnist1d(seed=0):
  """base_config with only what is not a recipe: the main job's data,
  backbone, batch size and seed (evaluation trimmed to kNN)."""
  c = base_config()
  c.dataset, c.backbone, c.backbone_kwargs = "mnist1d", "cnn1d", {"out_features": 128}
  c.batch_size, c.seed, c.num_devices = 128, seed, 1
  c.eval.linear_steps, c.eval.finetune_fractions, c.eval.head_knn = 0, (), False
  c.write_plots, c.checkpoint_every = False, 1_000_000
  return c


USES = [
  (name, labels)
  for name in methods.names()[:7]
  for labels in (False, True)
  if any(r.labels == labels for r in methods.get(name).recipes)
]


@pytest.fixture(scope="module")
def random_backbone_knn():
  return evaluation.evaluate_untrained(_defaults_on_mnist1d())["knn"]


@pytest.mark.slow
@pytest.mark.parametrize("name,labels", USES)
def test_every_method_at_its_defaults_beats_the_random_backbone(
  name, labels, random_backbone_knn, tmp_path
):
  """Each built-in method with each use of labels it has a recipe for, every
  recipe field unset, trains its recipe's own steps — 400, 800 or 1600, what a
  user gets (eight runs, 7600 steps: on 2 idle cores ~10 ms a step, about
  2–3 min with compilation and evaluation; 4–9 min a run under a load of
  25) — and must beat the randomly initialised backbone with BatchNorm
  statistics of the data (same seed) on test kNN by more than 0.02 (about
  one seed-to-seed std of the main job's baseline, 0.015): the defaults
  learn."""
  c = _defaults_on_mnist1d()
  c.loss = name
  if labels:
    c.label_fraction, c.labels_in_loss = 1.0, True
  assert unset_fields(c) == list(FIELDS)
  res = train.train_and_evaluate(c, str(tmp_path), progress=False)
  assert res["evaluated_on"] == "test"
  assert res["knn"] > random_backbone_knn + 0.02, (name, labels, res["knn"], random_backbone_knn)


def test_main_job_configs_do_not_share_their_runs():
  """Changing one config's run leaves the next config from the file as it was."""
  from experiments.configs import default

  first = default.get_config()
  first.runs.transfusion.num_steps = 4
  first.runs.supcon.learning_rate = 1.0
  second = default.get_config()
  assert second.runs.transfusion.num_steps is None and second.runs.supcon.learning_rate is None
