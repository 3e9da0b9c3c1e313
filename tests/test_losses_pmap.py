"""Every loss under jax.pmap on 4 fake CPU devices equals the single-device loss.

The global batch of N = 8 sources is split into 4 devices × 2 rows.  Each
device passes its local rows and ``axis_name="batch"``; the loss must be the
single-device loss of the whole batch, the same on every device.

Gradients: ``jax.grad`` inside pmap differentiates the sum over devices of
the per-device outputs.  Each device outputs the same global loss L, so the
gradient a device gets for its local rows is ``4 · ∂L/∂rows``; divided by the
device count it must equal the single-device gradient rows.  For a replicated
parameter W, ``pmean`` of the per-device gradients must equal the
single-device ∂L/∂W (what a pmapped train step does).

Tolerance (float32, only the summation order differs): rtol = 1e-5 and
atol = 1e-6 for values and gradients.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tfjax import losses
from tfjax.affinity import target_affinity
from tfjax.attention import adjacency

AXIS = "batch"
NDEV, NLOC, DIM, DIN, K = 4, 2, 5, 3, 3
N = NDEV * NLOC
RTOL, ATOL = 1e-5, 1e-6


def _losses(z1, z2, y_sc, y_oar, anchors, axis_name):
  """name -> loss(z1, z2) over one device's rows (or the whole batch)."""
  gather = (
    (lambda x: x)
    if axis_name is None
    else functools.partial(jax.lax.all_gather, axis_name=axis_name, tiled=True)
  )
  off = 0 if axis_name is None else jax.lax.axis_index(axis_name) * z1.shape[0]

  def jsd_oar(a, b):
    # TransFusion's JSD (adjacency rows of this device against the global
    # keys, zero diagonal at global indices) + OAR on both views.
    adj = adjacency(a, gather(a), diagonal_offset=off)
    tgt = target_affinity(y_sc, column_groups=gather(y_sc), diagonal_offset=off)
    base = losses.jsd_loss(adj, tgt, axis_name=axis_name)
    return losses.with_oar(
      base,
      jnp.concatenate([a, b]),
      jnp.concatenate([y_oar, y_oar]),
      anchors,
      weight=0.7,
      axis_name=axis_name,
    )

  kw = dict(axis_name=axis_name)
  return {
    "info_nce": lambda a, b: losses.info_nce(a, b, temperature=0.3, **kw),
    "dcl": lambda a, b: losses.dcl(a, b, temperature=0.3, **kw),
    "barlow_twins": lambda a, b: losses.barlow_twins(a, b, lambda_offdiag=0.05, **kw),
    "vicreg": lambda a, b: losses.vicreg(a, b, **kw),
    # Views flattened with the labels repeated: supcon with class labels.
    "supcon": lambda a, b: losses.supcon(
      jnp.concatenate([a, b]), jnp.concatenate([y_sc, y_sc]), temperature=0.3, **kw
    ),
    "oar": lambda a, b: losses.oar_loss(
      jnp.concatenate([a, b]), jnp.concatenate([y_oar, y_oar]), anchors, **kw
    ),
    "jsd+oar": jsd_oar,
  }


def _evaluate(x1, x2, w, y_sc, y_oar, anchors, axis_name):
  """Values and row gradients of every loss, and ∂(Σ losses)/∂W."""
  z1, z2 = x1 @ w, x2 @ w
  fns = _losses(z1, z2, y_sc, y_oar, anchors, axis_name)
  out = {name: jax.value_and_grad(fn, argnums=(0, 1))(z1, z2) for name, fn in fns.items()}

  def total(w):
    a, b = x1 @ w, x2 @ w
    return sum(fn(a, b) for fn in _losses(a, b, y_sc, y_oar, anchors, axis_name).values())

  gw = jax.grad(total)(w)
  if axis_name is not None:
    gw = jax.lax.pmean(gw, axis_name)
  return out, gw


@pytest.fixture(scope="module")
def results():
  assert jax.device_count() >= NDEV, "tests/conftest.py sets 4 CPU devices"
  rng = np.random.default_rng(0)
  x1 = rng.normal(size=(N, DIN)).astype(np.float32)
  x2 = (x1 + 0.4 * rng.normal(size=(N, DIN))).astype(np.float32)
  w = rng.normal(size=(DIN, DIM)).astype(np.float32)
  y_sc = np.array([0, 1, 2, 0, 1, 2, 0, 1], np.int32)
  y_oar = np.array([0, -1, 2, -1, 1, 2, -1, 1], np.int32)
  anchors = np.asarray(losses.orthonormal_anchors(jax.random.key(1), K, DIM))

  single = jax.jit(functools.partial(_evaluate, axis_name=None))(x1, x2, w, y_sc, y_oar, anchors)
  split = lambda a: a.reshape((NDEV, NLOC) + a.shape[1:])
  rep = lambda a: np.broadcast_to(a, (NDEV,) + a.shape)
  mapped = jax.pmap(
    functools.partial(_evaluate, axis_name=AXIS), axis_name=AXIS, devices=jax.devices()[:NDEV]
  )(split(x1), split(x2), rep(w), split(y_sc), split(y_oar), rep(anchors))
  return single, mapped


NAMES = ["info_nce", "dcl", "barlow_twins", "vicreg", "supcon", "oar", "jsd+oar"]


@pytest.mark.parametrize("name", NAMES)
def test_value_matches_single_device(results, name):
  (single, _), (mapped, _) = results
  value = single[name][0]
  per_device = np.asarray(mapped[name][0])
  assert per_device.shape == (NDEV,)
  assert np.all(per_device == per_device[0]), per_device  # same everywhere
  np.testing.assert_allclose(per_device, float(value), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("name", NAMES)
def test_row_gradients_match_single_device(results, name):
  (single, _), (mapped, _) = results
  for g_single, g_dev in zip(single[name][1], mapped[name][1]):
    g_dev = np.asarray(g_dev).reshape(N, DIM) / NDEV
    assert float(np.abs(g_single).max()) > 1e-3  # a real gradient
    np.testing.assert_allclose(g_dev, g_single, rtol=RTOL, atol=ATOL)


def test_parameter_gradient_pmean_matches_single_device(results):
  (_, gw_single), (_, gw_mapped) = results
  gw_mapped = np.asarray(gw_mapped)
  for d in range(NDEV):
    np.testing.assert_allclose(gw_mapped[d], gw_single, rtol=RTOL, atol=ATOL)
