"""tfjax.config.validate: one check of the config (and the data) before any compute."""

import jax.numpy as jnp
import numpy as np
import pytest

from tests.test_train import tiny_config, toy_data
from tfjax.config import base_config, validate
from tfjax.data.pipeline import ArraySource
from tfjax.state import build_network


def test_default_backbone_kwargs_are_each_backbones_own():
  c = base_config()
  assert dict(c.backbone_kwargs) == {}
  mlp = build_network(c).backbone  # the MLP's defaults: the same network
  assert (tuple(mlp.hidden), mlp.out_features, mlp.batch_norm) == ((256,), 128, False)
  c.dataset, c.backbone = "mnist1d", "cnn1d"
  assert validate(c, 1).name == "mnist1d"
  assert type(build_network(c).backbone).__name__ == "CNN1D"


def test_backbone_kwargs_the_backbone_does_not_take():
  c = base_config()
  c.dataset, c.backbone = "mnist1d", "cnn1d"
  c.backbone_kwargs = {"hidden": (256,), "out_features": 128}
  with pytest.raises(
    ValueError,
    match="^backbone_kwargs.hidden is not a field of "
    "backbone 'cnn1d'; it takes channels, kernel_size, out_features$",
  ):
    validate(c, 1)
  c = base_config()
  c.backbone, c.embed_dim = "identity", 0
  c.backbone_kwargs = {"hidden": (4,)}
  with pytest.raises(ValueError, match="backbone 'identity' takes no backbone_kwargs"):
    validate(c, 1)


def test_head_compute_dtype_reaches_the_dense_and_the_blockwise_head():
  from tfjax.state import build_network

  for implementation in ("dense", "blockwise"):
    c = tiny_config(**{"head.compute_dtype": "bfloat16", "head.implementation": implementation})
    validate(c, 1)
    assert build_network(c).head.compute_dtype == jnp.bfloat16
  c.head.compute_dtype = "float16"
  with pytest.raises(ValueError, match="head.compute_dtype"):
    validate(c, 1)


def test_batch_of_one_source_is_refused():
  with pytest.raises(ValueError, match="batch_size must be >= 2, got 1"):
    validate(tiny_config(batch_size=1), 1)
  validate(tiny_config(batch_size=2), 1)


@pytest.mark.parametrize("data", ["arrays", "sources"])
def test_label_fraction_smallest_that_works(data):
  arrays = toy_data()  # 48 training examples, 3 classes
  given = arrays if data == "arrays" else (ArraySource(*arrays[:2]), ArraySource(*arrays[2:]))
  validate(tiny_config(label_fraction=3 / 48), 1, data=given)
  with pytest.raises(ValueError, match="the smallest label_fraction that works is 0.0625$"):
    validate(tiny_config(label_fraction=0.06), 1, data=given)


def test_data_checked_whole_and_cheaply():
  x, y, xt, yt = toy_data()
  validate(tiny_config(), 1, data=(x, y, xt, yt))
  bad = x.copy()
  bad[3, 1] = np.nan
  with pytest.raises(ValueError, match=r"^x_train holds NaN/inf \(first at index 3\)$"):
    validate(tiny_config(), 1, data=(bad, y, xt, yt))
  # The same checks for in-memory sources; records elsewhere are not read.
  with pytest.raises(ValueError, match=r"x_train holds NaN/inf \(first at index 3\)"):
    validate(tiny_config(), 1, data=(ArraySource(bad, y), ArraySource(xt, yt)))
  with pytest.raises(ValueError, match=r"x_test has shape \[4\] per example, x_train \[8\]"):
    validate(tiny_config(), 1, data=(ArraySource(x, y), ArraySource(xt[:, :4], yt)))
  with pytest.raises(
    ValueError,
    match="batch_size 16 exceeds the 12 training examples "
    "after holding out validation_fraction=0.75",
  ):
    validate(tiny_config(validation_fraction=0.75), 1, data=(x, y, xt, yt))
