"""The method registry: built-ins declared once; a new loss trains through the public API."""

import jax.numpy as jnp
import numpy as np
import pytest

from tfjax import methods, train
from tfjax.config import base_config, validate
from tfjax.metrics import read_metrics


def toy_config(loss):
  c = base_config()
  c.dataset = "subspaces_tiny"
  c.backbone = "mlp"
  c.backbone_kwargs = {"hidden": (16,), "out_features": 12}
  c.embed_dim, c.projector_hidden = 8, (16,)
  c.loss = loss
  c.batch_size, c.num_steps, c.warmup_steps = 16, 2, 0
  c.log_every, c.checkpoint_every, c.num_devices = 1, 2, 1
  c.eval.linear_steps, c.eval.finetune_fractions, c.eval.knn_k = 0, (), 3
  c.write_plots = False
  return c


def toy_data(n=48, dim=8, classes=3, seed=0):
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(classes, dim)) * 2

  def draw(m):
    y = np.arange(m) % classes
    return (centres[y] + rng.normal(size=(m, dim))).astype(np.float32), y.astype(np.int32)

  return (*draw(n), *draw(24))


def test_builtins_are_declared_once():
  assert methods.names()[:6] == ("jsd", "supcon", "info_nce", "dcl", "barlow_twins", "vicreg")
  jsd, supcon, nce = methods.get("jsd"), methods.get("supcon"), methods.get("info_nce")
  assert jsd.uses_head and jsd.accepts_labels and jsd.num_views is None
  assert supcon.accepts_labels and not supcon.uses_head
  assert nce.num_views == 2 and not nce.accepts_labels
  assert dict(nce.options) == {"temperature": 0.1}
  with pytest.raises(ValueError, match="unknown loss 'simclr'; known: .*info_nce"):
    methods.get("simclr")
  with pytest.raises(ValueError, match="already registered"):
    methods.register(methods.Method("jsd", "again", lambda inputs: 0.0))


def test_names_for_tables_and_directories():
  c = toy_config("jsd")
  c.label_fraction, c.labels_in_loss = 1.0, True
  assert methods.display_name(c) == "TransFusion (JSD), class targets"
  assert methods.run_name(c) == "jsd_labels1"
  c.label_fraction = 0.1
  assert methods.display_name(c) == "TransFusion (JSD), class targets, 10 % labels"
  c.label_fraction, c.labels_in_loss = None, False
  assert methods.display_name(c) == "TransFusion (JSD), self-supervised"
  c = toy_config("supcon")
  c.label_fraction, c.labels_in_loss = 1.0, True
  assert methods.display_name(c) == "SupCon, class targets"
  c = toy_config("info_nce")
  assert methods.display_name(c) == "SimCLR (InfoNCE), self-supervised"
  c.label_fraction, c.oar_weight = 0.1, 1.0  # labels in OAR only
  assert methods.display_name(c) == "OAR-SimCLR (InfoNCE), 10 % labels"
  assert methods.run_name(c) == "oar_info_nce"


def test_options_read_from_config_then_loss_options_then_default():
  m = methods.Method(
    "toy",
    "Toy",
    lambda inputs, **kw: 0.0,
    options={"temperature": 1.0, "margin": 0.5, "power": 2.0},
  )
  c = toy_config("info_nce")
  c.temperature = 0.3
  c.loss_options.margin = 0.9
  assert m.resolve_options(c) == {"temperature": 0.3, "margin": 0.9, "power": 2.0}


def test_a_registered_toy_loss_trains_through_the_public_api(tmp_path):
  """Adding a loss = its function + one registry entry; the loop, the step,
  the names and the checks pick it up."""
  seen = {}

  def alignment(inputs, *, power):
    z1, z2 = inputs.views()
    seen["shapes"] = (z1.shape, z2.shape, inputs.groups.shape)
    u1 = z1 / jnp.linalg.norm(z1, axis=-1, keepdims=True)
    u2 = z2 / jnp.linalg.norm(z2, axis=-1, keepdims=True)
    return jnp.mean(jnp.sum((u1 - u2) ** 2, -1) ** (power / 2))

  methods.register(
    methods.Method("alignment", "Alignment only", alignment, num_views=2, options={"power": 2.0})
  )
  try:
    c = toy_config("alignment")
    c.loss_options.power = 1.0
    with pytest.raises(ValueError, match="takes exactly 2 views"):
      bad = toy_config("alignment")
      bad.num_views = 3
      validate(bad)
    res = train.train_and_evaluate(c, str(tmp_path), data=toy_data(), progress=False)
    assert res["step"] == 2 and np.isfinite(res["final_loss"])
    assert seen["shapes"] == ((16, 8), (16, 8), (32,))
    records = read_metrics(str(tmp_path / "metrics.jsonl"))
    assert [r["step"] for r in records] == [1, 2]
    assert records[0]["grad_norm"] > 0  # the loss reached the parameters
    assert methods.display_name(c) == "Alignment only, self-supervised"
  finally:
    methods.unregister("alignment")
  with pytest.raises(ValueError, match="unknown loss 'alignment'"):
    methods.get("alignment")
