"""The training step: one pure function for every method and experiment.

``train_step(state, batch, key) -> (state, metrics)``:

1. V views of every source are made on device by a pure augmentation of
   ``key``; sample i of view v uses ``fold_in(fold_in(key, v), g)`` with g
   the sample's *global* index in the batch, so one device and four devices
   draw the same views;
2. the network maps the views to embeddings and the method's loss (looked up
   in :mod:`tfjax.methods`) is taken over the **global** batch: under
   ``jax.pmap`` every collective runs over ``state.recipe.axis_name``, the
   TransFusion head all-gathers keys and values, BatchNorm statistics are
   cross-device;
3. CLOA's OAR loss is added when ``oar_weight > 0``;
4. gradients are averaged over devices (each device's loss is the global
   loss, so the pmean of the per-device gradients is the single-device
   gradient) and the optax update is applied.

``batch`` is ``{"x": [n, ...]}`` plus ``"semi_label": int [n]`` (class or −1)
when the run has labels; under pmap it is the device's share.  With
``"labelled_x"`` [m, ...] and ``"labelled_label"`` [m] (CLOA's protocol, the
config's ``labelled_batch_size``), OAR is taken on that separate labelled
batch (its own views, its own forward pass) instead of the main batch's
labelled rows.  Jit it as it
is (``jax.jit(train_step)``), or pmap it with ``in_axes=(0, 0, None)``.
:func:`train_steps` runs several steps in one call (a ``lax.scan``).

Metrics (scalars, global): ``loss``, ``base_loss``, ``oar_loss``,
``grad_norm``, ``base_grad_norm`` and ``oar_grad_norm`` (the gradients of the
base loss and of the unweighted OAR loss, apart; the OAR one is 0 without
OAR), ``param_norm`` (of the backbone's weights),
``rows_without_positive`` (fraction of the global batch's rows with no
positive under the method's target: 0 for two-view methods),
``embedding_variance`` (1 − ‖mean‖² of the normalised embeddings; 0 = all
equal), and for the dense TransFusion head ``uniform_rows`` (the fraction of
"dead" adjacency rows: uniform, so they pass no gradient).
"""

from __future__ import annotations

from typing import Callable, Dict

import jax
import jax.numpy as jnp
import optax

from tfjax import diagnostics, losses, methods
from tfjax.data.augment import get_augmentation
from tfjax.networks import ContrastiveNet
from tfjax.state import TrainState

Array = jax.Array


def global_index_views(
  augment_fn: Callable, key: Array, x: Array, strength: float, num_views: int, first_index
) -> Array:
  """``[V, n, ...]`` views of the local batch ``x`` [n, ...].

  Sample i of view v uses the key ``fold_in(fold_in(key, v), first_index + i)``:
  keyed by the *global* sample index, so the views do not depend on how the
  batch is split over devices (unlike ``tests.helpers.make_views``, which splits
  one key over the local batch).
  """
  index = first_index + jnp.arange(x.shape[0])

  def one_view(v):
    view_key = jax.random.fold_in(key, v)
    keys = jax.vmap(lambda i: jax.random.fold_in(view_key, i))(index)
    return jax.vmap(augment_fn, in_axes=(0, 0, None))(keys, x, strength)

  return jnp.stack([one_view(v) for v in range(num_views)])


# fold_in data of the labelled batch's augmentation key (views use 0 … V−1).
LABELLED_KEY = 1 << 20


def rows_without_positive(ids: Array) -> Array:
  """Fraction of rows whose id [m] occurs nowhere else (no positive), O(m log m)."""
  s = jnp.sort(ids)
  count = jnp.searchsorted(s, ids, side="right") - jnp.searchsorted(s, ids, side="left")
  return jnp.mean((count < 2).astype(jnp.float32))


def _backbone_norm(params) -> Array:
  return optax.global_norm(params.get("backbone", params))


def train_step(state: TrainState, batch: Dict[str, Array], key: Array):
  """One optimisation step of ``state``'s method; see the module docstring."""
  recipe = state.recipe
  axis = recipe.axis_name
  method = methods.get(recipe.method)
  options = dict(recipe.options)
  x = batch["x"]
  n = x.shape[0]
  first = 0 if axis is None else jax.lax.axis_index(axis) * n
  augment = get_augmentation(recipe.augment, recipe.data_kind)
  views = global_index_views(augment, key, x, recipe.augment_strength, recipe.num_views, first)
  flat = views.reshape((recipe.num_views * n,) + views.shape[2:])
  groups = jnp.tile(first + jnp.arange(n, dtype=jnp.int32), recipe.num_views)
  labels = None
  if "semi_label" in batch:
    labels = jnp.tile(batch["semi_label"].astype(jnp.int32), recipe.num_views)

  separate = "labelled_x" in batch  # CLOA's protocol: OAR on its own batch
  if separate:
    xl = batch["labelled_x"]
    nl = xl.shape[0]
    first_l = 0 if axis is None else jax.lax.axis_index(axis) * nl
    views_l = global_index_views(
      augment,
      jax.random.fold_in(key, LABELLED_KEY),
      xl,
      recipe.augment_strength,
      recipe.num_views,
      first_l,
    )
    flat_l = views_l.reshape((recipe.num_views * nl,) + views_l.shape[2:])
    labels_l = jnp.tile(batch["labelled_label"].astype(jnp.int32), recipe.num_views)

  diagnostics_ = {}  # what the head sows (e.g. uniform_rows), out through aux

  def loss_fn(params):
    (_, z), new_model_state = state.model.apply(
      {"params": params, "batch_stats": state.batch_stats},
      flat,
      train=True,
      mutable=["batch_stats"],
    )

    def head_loss(z_, groups_, labels_, **head_options):
      out, sown = state.model.apply(
        {"params": params},
        z_,
        groups_,
        labels_,
        recipe.num_views,
        method=ContrastiveNet.head_loss,
        mutable=["diagnostics"],
        **head_options,
      )
      for name, values in sown.get("diagnostics", {}).get("head", {}).items():
        diagnostics_[name] = values[0]
      return out

    inputs = methods.LossInputs(
      z=z,
      num_views=recipe.num_views,
      groups=groups,
      labels=labels if recipe.labels_in_loss else None,
      axis_name=axis,
      head_loss=head_loss if method.uses_head else None,
    )
    base = method.loss(inputs, **options)
    ids = inputs.positive_ids() if method.accepts_labels else groups
    oar = jnp.zeros((), base.dtype)
    stats = new_model_state.get("batch_stats", {})
    if state.anchors is not None and separate:
      # A second forward pass in train mode, as the authors' two loaders do:
      # its BatchNorm uses the labelled batch's statistics and updates the
      # running averages once more.
      (_, z_l), labelled_state = state.model.apply(
        {"params": params, "batch_stats": stats}, flat_l, train=True, mutable=["batch_stats"]
      )
      stats = labelled_state.get("batch_stats", {})
      oar = losses.oar_loss(z_l, labels_l, state.anchors, axis_name=axis)
    elif state.anchors is not None:
      oar = losses.oar_loss(z, labels, state.anchors, axis_name=axis)
    return (base, oar), (stats, z, ids, dict(diagnostics_))

  (base, oar), vjp, (batch_stats, z, ids, sown) = jax.vjp(loss_fn, state.params, has_aux=True)
  one, zero = jnp.ones_like(base), jnp.zeros_like(base)
  mean = (lambda g: g) if axis is None else (lambda g: jax.lax.pmean(g, axis))
  base_grads = mean(vjp((one, zero))[0])
  if state.anchors is None:
    grads, oar_grad_norm = base_grads, jnp.zeros((), jnp.float32)
  else:  # a second backward pass: the two losses' gradients logged apart
    oar_grads = mean(vjp((zero, one))[0])
    grads = jax.tree.map(lambda b, o: b + recipe.oar_weight * o, base_grads, oar_grads)
    oar_grad_norm = optax.global_norm(oar_grads)
  loss = base + recipe.oar_weight * oar
  updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  z_all, ids_all = (z, ids) if axis is None else jax.lax.all_gather((z, ids), axis, tiled=True)
  metrics = dict(
    loss=loss,
    base_loss=base,
    oar_loss=oar,
    rows_without_positive=rows_without_positive(ids_all),
    grad_norm=optax.global_norm(grads),
    base_grad_norm=optax.global_norm(base_grads),
    oar_grad_norm=oar_grad_norm,
    param_norm=_backbone_norm(params),
    embedding_variance=diagnostics.embedding_variance(z_all),
    **sown,
  )
  new_state = state.replace(
    step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state
  )
  return new_state, metrics


def train_steps(state: TrainState, batches: Dict[str, Array], keys: Array):
  """``S`` steps in one call: ``batches`` [S, n, ...], ``keys`` [S].

  Returns the state after the last step and the metrics of every step
  (each [S]).  Equal to S calls of :func:`train_step` (a ``lax.scan``).
  """

  def body(s, inputs):
    batch, key = inputs
    return train_step(s, batch, key)

  return jax.lax.scan(body, state, (batches, keys))


def step_key(seed: int, step) -> Array:
  """The PRNG key of global step ``step`` (a pure function of seed and step)."""
  return jax.random.fold_in(jax.random.key(seed), step)
