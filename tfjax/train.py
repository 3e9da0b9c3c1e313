"""Functional training: ``TrainState``, ``train_step`` (jit or pmap), the loop.

``train_step(state, batch, key) -> (state, metrics)`` is a pure function:

1. two (or more) views of every source are made on device by a pure
   augmentation of ``key`` (per-sample keys are folded from the sample's
   *global* index, so one device and four devices draw the same views);
2. the network maps the views to embeddings; the configured loss (JSD of the
   TransFusion head, InfoNCE, SupCon, DCL, Barlow Twins or VICReg) is taken
   over the **global** batch — under ``jax.pmap`` every collective runs over
   ``axis_name``, the TransFusion head all-gathers keys and values, and
   BatchNorm statistics are cross-device;
3. OAR is added when ``oar_weight > 0``;
4. gradients are averaged over devices (each device's loss is the global loss,
   so the pmean of the per-device gradients is the single-device gradient) and
   the optax update is applied.

:func:`train_and_evaluate` runs the loop: resumable orbax checkpoints,
JSON-lines metrics, a progress bar, and the final evaluation.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from typing import Any, Callable, Dict, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from tfjax import diagnostics, distributed, losses
from tfjax.backbones import get_backbone
from tfjax.checkpoint import Checkpointer
from tfjax.models import TransFusionHead
from tfjax.networks import ContrastiveNet
from tfjax.optim import make_optimizer, make_schedule

Array = jax.Array

LOSSES = ("jsd", "info_nce", "supcon", "dcl", "barlow_twins", "vicreg")
TWO_VIEW_LOSSES = ("info_nce", "dcl", "barlow_twins", "vicreg")


@flax.struct.dataclass
class TrainState:
  """Everything a training step changes, as one pytree."""
  step: Array
  params: Any
  batch_stats: Any
  opt_state: Any


# ----------------------------------------------------------------------------
# Configuration checks: before any compute.
# ----------------------------------------------------------------------------
def validate_config(config: ml_collections.ConfigDict, num_devices: int = 1):
  """Raises ValueError for names or sizes that cannot work, before compute."""
  from tfjax.backbones import BACKBONES
  from tfjax.data.registry import get_dataset_spec
  from tfjax.optim import OPTIMIZERS

  spec = get_dataset_spec(config.dataset)  # unknown dataset -> ValueError
  if config.loss not in LOSSES:
    raise ValueError(f"unknown loss {config.loss!r}; known: {list(LOSSES)}")
  if config.backbone not in BACKBONES:
    raise ValueError(
        f"unknown backbone {config.backbone!r}; known: {sorted(BACKBONES)}")
  if config.optimizer not in OPTIMIZERS:
    raise ValueError(
        f"unknown optimizer {config.optimizer!r}; known: {sorted(OPTIMIZERS)}")
  if config.batch_size % num_devices:
    raise ValueError(
        f"global batch_size {config.batch_size} is not divisible by the "
        f"device count {num_devices}")
  if not 0 <= config.warmup_steps < config.num_steps:
    raise ValueError(f"warmup_steps ({config.warmup_steps}) must lie in "
                     f"[0, num_steps={config.num_steps})")
  if config.num_views < 2:
    raise ValueError(f"num_views must be >= 2, got {config.num_views}")
  if config.loss in TWO_VIEW_LOSSES and config.num_views != 2:
    raise ValueError(f"loss {config.loss!r} takes exactly 2 views, "
                     f"got num_views={config.num_views}")
  if config.oar_weight > 0 and not config.label_fraction:
    raise ValueError("oar_weight > 0 needs label_fraction > 0 (OAR pulls "
                     "the labelled samples toward their class anchors)")
  if config.label_fraction is not None and not 0 < config.label_fraction <= 1:
    raise ValueError(f"label_fraction must be in (0, 1] (or None for no "
                     f"labels), got {config.label_fraction}")
  _head_impl_kwargs(config)          # implementation / block / dtype checks
  return spec


# ----------------------------------------------------------------------------
# Model, optimiser, state.
# ----------------------------------------------------------------------------
def build_network(config, axis_name: Optional[str] = None) -> ContrastiveNet:
  """The configured ``ContrastiveNet`` (head only for the JSD loss)."""
  backbone_kwargs = dict(config.backbone_kwargs)
  backbone = get_backbone(config.backbone, axis_name=axis_name, **backbone_kwargs)
  head = None
  if config.loss == "jsd":
    head = TransFusionHead(num_layers=config.head.num_layers,
                           features=config.head.features,
                           activation=config.head.activation,
                           axis_name=axis_name,
                           **_head_impl_kwargs(config))
  return ContrastiveNet(backbone=backbone, embed_dim=config.embed_dim,
                        projector_hidden=tuple(config.projector_hidden),
                        head=head, axis_name=axis_name)


def _head_impl_kwargs(config) -> dict:
  from tfjax.models import IMPLEMENTATIONS
  impl = config.head.get("implementation", "dense")
  if impl not in IMPLEMENTATIONS:
    raise ValueError(f"unknown head.implementation {impl!r}; choose one of "
                     f"{IMPLEMENTATIONS}")
  if impl == "dense":
    return {}
  block_size = config.head.block_size
  if isinstance(block_size, bool) or not isinstance(block_size, int) or (
      block_size < 1):
    raise ValueError(f"head.block_size must be a positive int, got "
                     f"{block_size!r}")
  name = config.head.get("compute_dtype", None)
  dtype = None
  if name:
    try:
      dtype = jnp.dtype(name)
    except TypeError:
      dtype = None
    if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
      raise ValueError(f"head.compute_dtype must name a float dtype such as "
                       f"'bfloat16' (or be None), got {name!r}")
  return {"implementation": impl, "block_size": block_size,
          "compute_dtype": dtype}


def build_optimizer(config) -> optax.GradientTransformation:
  schedule = make_schedule(config.schedule, base_lr=config.learning_rate,
                           total_steps=config.num_steps,
                           warmup_steps=config.warmup_steps)
  return make_optimizer(config.optimizer, schedule,
                        weight_decay=config.weight_decay,
                        momentum=config.momentum,
                        weight_decay_mask="no_bias_norm")


def create_train_state(config, model: nn.Module, tx, key: Array,
                       x_shape) -> TrainState:
  """Initialises parameters (deterministic per ``key``) and the optimiser."""
  dummy = jnp.zeros((max(4, config.num_views * 2),) + tuple(x_shape), jnp.float32)
  # Jitted: eager Flax init dispatches op by op (a minute for a small CNN).
  variables = jax.jit(functools.partial(
      model.init, method=ContrastiveNet.init_all))(key, dummy)
  params = variables["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=variables.get("batch_stats", {}),
                    opt_state=tx.init(params))


def class_anchors(config, num_classes: int) -> Optional[Array]:
  """CLOA's fixed orthonormal anchors in embedding space (None without OAR)."""
  if config.oar_weight <= 0:
    return None
  return losses.orthonormal_anchors(jax.random.key(config.seed + 7919),
                                    num_classes, config.embed_dim)


# ----------------------------------------------------------------------------
# The step.
# ----------------------------------------------------------------------------
def global_index_views(augment_fn: Callable, key: Array, x: Array,
                       strength: float, num_views: int, first_index) -> Array:
  """``[V, n, ...]`` views of the local batch ``x`` [n, ...].

  Sample i of view v uses the key ``fold_in(fold_in(key, v), first_index + i)``:
  keyed by the *global* sample index, so the views do not depend on how the
  batch is split over devices (unlike ``tfjax.data.make_views``, which splits
  one key over the local batch).
  """
  index = first_index + jnp.arange(x.shape[0])

  def one_view(v):
    view_key = jax.random.fold_in(key, v)
    keys = jax.vmap(lambda i: jax.random.fold_in(view_key, i))(index)
    return jax.vmap(augment_fn, in_axes=(0, 0, None))(keys, x, strength)

  return jnp.stack([one_view(v) for v in range(num_views)])


def semi_supervised_ids(groups: Array, labels: Array) -> Array:
  """One id per sample whose equality is the semi-supervised positive relation.

  Labelled samples take their class ``c``; unlabelled ones ``−1 − source``
  (negative, so never equal to a class).  Two samples share an id exactly
  when they are views of one source or both labelled with one class — the
  relation of :func:`tfjax.positive_mask` with labels, because a source's
  views carry the same label.
  """
  return jnp.where(labels >= 0, labels, -1 - groups)


def make_train_step(config, model: ContrastiveNet, tx, augment_fn: Callable,
                    anchors: Optional[Array] = None,
                    axis_name: Optional[str] = None):
  """Returns ``train_step(state, batch, key) -> (state, metrics)``.

  ``batch``: ``{"x": [n, ...], "semi_label": [n] (with label_fraction)}`` —
  the local batch (the device's share under pmap).  Jit it, or pmap it with
  the same ``axis_name`` that built ``model``.
  """
  num_views = config.num_views
  use_labels = config.label_fraction is not None and config.labels_in_loss

  def loss_fn(params, batch_stats, views, groups, labels):
    v, n = views.shape[:2]
    flat = views.reshape((v * n,) + views.shape[2:])
    (features, z), new_model_state = model.apply(
        {"params": params, "batch_stats": batch_stats}, flat, train=True,
        mutable=["batch_stats"])
    del features
    z_views = z.reshape(v, n, -1)
    name = config.loss
    if name == "jsd":
      base = model.apply({"params": params}, z, groups,
                         labels if use_labels else None,
                         method=ContrastiveNet.head_loss)
    elif name == "supcon":
      base = losses.supcon(z, semi_supervised_ids(groups, labels) if use_labels
                           else groups, temperature=config.temperature,
                           axis_name=axis_name)
    elif name == "info_nce":
      base = losses.info_nce(z_views[0], z_views[1],
                             temperature=config.temperature, axis_name=axis_name)
    elif name == "dcl":
      base = losses.dcl(z_views[0], z_views[1],
                        temperature=config.temperature, axis_name=axis_name)
    elif name == "barlow_twins":
      base = losses.barlow_twins(z_views[0], z_views[1],
                                 lambda_offdiag=config.lambda_offdiag,
                                 axis_name=axis_name)
    else:
      base = losses.vicreg(z_views[0], z_views[1], axis_name=axis_name)
    total = base
    oar = jnp.zeros(())
    if anchors is not None:
      oar = losses.oar_loss(z, labels, anchors, axis_name=axis_name)
      total = base + config.oar_weight * oar
    aux = dict(batch_stats=new_model_state["batch_stats"], z=z,
               base_loss=base, oar_loss=oar)
    return total, aux

  def train_step(state: TrainState, batch: Dict[str, Array], key: Array):
    x = batch["x"]
    n = x.shape[0]
    first = 0 if axis_name is None else jax.lax.axis_index(axis_name) * n
    views = global_index_views(augment_fn, key, x, config.augment_strength,
                               num_views, first)
    source = first + jnp.arange(n, dtype=jnp.int32)
    groups = jnp.tile(source, num_views)
    labels = None
    if config.label_fraction is not None:
      labels = jnp.tile(batch["semi_label"].astype(jnp.int32), num_views)
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, state.batch_stats, views, groups, labels)
    if axis_name is not None:
      grads = jax.lax.pmean(grads, axis_name)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    z_all = aux["z"] if axis_name is None else jax.lax.all_gather(
        aux["z"], axis_name, tiled=True)
    metrics = dict(loss=loss, base_loss=aux["base_loss"],
                   oar_loss=aux["oar_loss"],
                   embedding_variance=diagnostics.embedding_variance(z_all),
                   grad_norm=optax.global_norm(grads))
    new_state = state.replace(step=state.step + 1, params=params,
                              batch_stats=aux["batch_stats"],
                              opt_state=opt_state)
    return new_state, metrics

  return train_step


# ----------------------------------------------------------------------------
# Devices.
# ----------------------------------------------------------------------------
def replicate(tree, num_devices: int):
  """Stacks ``tree`` ``num_devices`` times along a new leading (pmap) axis."""
  return jax.tree.map(
      lambda x: jnp.broadcast_to(x, (num_devices,) + jnp.shape(x)), tree)


def unreplicate(tree):
  """First device's copy of a replicated pytree."""
  return jax.tree.map(lambda x: x[0], tree)


def shard(batch: Dict[str, np.ndarray], num_devices: int):
  """[B, ...] -> [D, B/D, ...] for pmap."""
  def split(x):
    if x.shape[0] % num_devices:
      raise ValueError(f"batch of {x.shape[0]} is not divisible by the device "
                       f"count {num_devices}")
    return x.reshape((num_devices, x.shape[0] // num_devices) + x.shape[1:])
  return jax.tree.map(split, batch)


def batch_indices(seed: int, step: int, num_examples: int,
                  batch_size: int) -> np.ndarray:
  """Example indices of global step ``step``: a pure function of (seed, step).

  Each epoch is a fresh seeded permutation; the tail that does not fill a
  batch is dropped.  Because the order depends on nothing but the step, a
  resumed run sees exactly the batches an uninterrupted run would (our
  in-memory sampler; large datasets stream through ``tfjax.data.make_dataset``).
  """
  per_epoch = num_examples // batch_size
  if per_epoch == 0:
    raise ValueError(f"batch_size {batch_size} exceeds the {num_examples} "
                     "training examples")
  epoch, pos = divmod(step, per_epoch)
  perm = np.random.default_rng([seed, epoch]).permutation(num_examples)
  return perm[pos * batch_size:(pos + 1) * batch_size]


def step_key(seed: int, step) -> Array:
  return jax.random.fold_in(jax.random.key(seed), step)


# ----------------------------------------------------------------------------
# Features for evaluation (inductive representation).
# ----------------------------------------------------------------------------
def extract_features(model: ContrastiveNet, params, batch_stats, x: np.ndarray,
                     batch_size: int = 512, *, embeddings: bool = False) -> np.ndarray:
  """Backbone features [N, F] of ``x`` [N, ...] in eval mode (numpy).

  With ``embeddings`` the projector's output [N, D] instead (inductive too).
  """
  variables = {"params": params, "batch_stats": batch_stats}
  if embeddings:
    fn = jax.jit(lambda v, xb: model.apply(v, xb)[1])
  else:
    fn = jax.jit(lambda v, xb: model.apply(v, xb, method=ContrastiveNet.features))
  out = []
  for start in range(0, x.shape[0], batch_size):
    out.append(np.asarray(fn(variables, x[start:start + batch_size])))
  return np.concatenate(out)


# ----------------------------------------------------------------------------
# Evaluation of the inductive representation.
# ----------------------------------------------------------------------------
def evaluate_features(train_x: np.ndarray, train_y: np.ndarray,
                      test_x: np.ndarray, test_y: np.ndarray, *,
                      num_classes: int, eval_config) -> Dict[str, float]:
  """kNN, linear probe and MLP fine-tuning accuracies of fixed features.

  ``eval_config.linear_steps = 0`` skips the linear probe and an empty
  ``finetune_fractions`` skips fine-tuning (cheap sweeps and tests).
  """
  from tfjax import evaluation

  train_x = train_x.reshape(train_x.shape[0], -1)
  test_x = test_x.reshape(test_x.shape[0], -1)
  out = {}
  out["knn"] = evaluation.knn_accuracy(
      train_x, train_y, test_x, test_y, num_classes=num_classes,
      k=eval_config.knn_k, temperature=eval_config.knn_temperature)
  if eval_config.linear_steps > 0:
    out["linear"] = evaluation.linear_probe(
        train_x, train_y, test_x, test_y, num_classes=num_classes,
        steps=eval_config.linear_steps, seed=0)["accuracy"]
  if eval_config.finetune_fractions:
    ft = evaluation.finetune_protocol(
        train_x, train_y, test_x, test_y, num_classes=num_classes,
        fractions=tuple(eval_config.finetune_fractions),
        steps=eval_config.finetune_steps, seed=0)
    for fraction, acc in ft.items():
      out[f"finetune@{fraction:g}"] = acc
  return {k: float(v) for k, v in out.items()}


def evaluate_untrained(config, data, num_classes: int) -> Dict[str, float]:
  """The evaluations of a randomly initialised backbone (a baseline)."""
  x_train, y_train, x_test, y_test = data
  model = build_network(config)
  state = create_train_state(config, model, build_optimizer(config),
                             jax.random.key(config.seed), x_train.shape[1:])
  feats = [extract_features(model, state.params, state.batch_stats, x)
           for x in (x_train, x_test)]
  return evaluate_features(feats[0], y_train, feats[1], y_test,
                           num_classes=num_classes, eval_config=config.eval)


# ----------------------------------------------------------------------------
# The loop.
# ----------------------------------------------------------------------------
class MetricsWriter:
  """Appends one JSON object per line; on resume drops lines past ``step``."""

  def __init__(self, path: str, resume_step: int = 0):
    self.path = path
    kept = []
    if os.path.exists(path):
      with open(path) as f:
        kept = [l for l in f if l.strip() and json.loads(l).get("step", 0) <= resume_step]
    with open(path, "w") as f:
      f.writelines(kept)

  def write(self, record: Dict[str, Any]) -> None:
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")


def read_metrics(path: str):
  with open(path) as f:
    return [json.loads(l) for l in f if l.strip()]


def _progress(total: int, initial: int, enabled: bool, desc: str):
  if not enabled:
    return None
  from tqdm.auto import tqdm
  return tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       progress: bool = True, data=None,
                       stop_after: Optional[int] = None) -> Dict[str, Any]:
  """Trains ``config`` in ``workdir`` (resuming from its last checkpoint).

  Writes ``metrics.jsonl``, ``checkpoints/``, ``results.json`` and plots to
  ``workdir``.  ``data`` may give ``(x_train, y_train, x_test, y_test)``
  arrays instead of loading ``config.dataset``.  ``stop_after`` ends the run
  after that many steps of this call without the final evaluation (to test
  resumption).  Returns the results dict.
  """
  processes = jax.process_count()
  num_devices = config.num_devices or jax.device_count()
  if processes > 1 and num_devices != jax.device_count():
    raise ValueError(f"a run of {processes} processes uses all "
                     f"{jax.device_count()} devices; set num_devices=0, "
                     f"not {num_devices}")
  if num_devices > jax.device_count():
    raise ValueError(f"config asks for {num_devices} devices, but only "
                     f"{jax.device_count()} are available")
  spec = validate_config(config, num_devices)
  local_devices = num_devices // processes
  primary = distributed.is_primary()
  os.makedirs(workdir, exist_ok=True)
  if primary:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json(indent=2))

  if data is None:
    from tfjax.data import load_arrays
    x_train, y_train = load_arrays(config.dataset, spec.train_split, config.data_dir)
    x_test, y_test = load_arrays(config.dataset, spec.test_split, config.data_dir)
  else:
    x_train, y_train, x_test, y_test = data
  semi = None
  if config.label_fraction is not None:
    from tfjax.evaluation import balanced_subset
    keep = np.zeros(len(y_train), bool)
    keep[balanced_subset(y_train, config.label_fraction, config.seed)] = True
    semi = np.where(keep, y_train, -1).astype(np.int32)

  from tfjax.data.augment import get_augment_fn
  axis_name = "batch" if num_devices > 1 else None
  eval_model = build_network(config)
  model = build_network(config, axis_name)
  tx = build_optimizer(config)
  anchors = class_anchors(config, spec.num_classes)
  state = create_train_state(config, eval_model, tx, jax.random.key(config.seed),
                             x_train.shape[1:])

  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))
  restored = ckpt.restore_latest(state)
  if restored is not None:
    state = restored
  start = int(state.step)
  writer = (MetricsWriter(os.path.join(workdir, "metrics.jsonl"), start)
            if primary else None)

  step_fn = make_train_step(config, model, tx, get_augment_fn(spec.kind),
                            anchors, axis_name)
  if axis_name is None:
    step_fn = jax.jit(step_fn)
  else:
    step_fn = jax.pmap(step_fn, axis_name=axis_name, in_axes=(0, 0, None))
    state = replicate(state, local_devices)

  bar = _progress(config.num_steps, start, progress and primary, config.loss)
  t0, last = time.time(), None
  end = config.num_steps if stop_after is None else min(config.num_steps, start + stop_after)
  for step in range(start, end):
    idx = distributed.process_rows(
        batch_indices(config.seed, step, len(x_train), config.batch_size))
    batch = {"x": x_train[idx]}
    if semi is not None:
      batch["semi_label"] = semi[idx]
    if axis_name is not None:
      batch = shard(batch, local_devices)
    state, metrics = step_fn(state, batch, step_key(config.seed, step))
    done = step + 1
    if done % config.log_every == 0 or done == config.num_steps:
      m = metrics if axis_name is None else unreplicate(metrics)
      record = {"step": done, **{k: float(v) for k, v in m.items()},
                "elapsed_s": round(time.time() - t0, 2)}
      if not np.isfinite(record["loss"]):
        raise FloatingPointError(f"loss is {record['loss']} at step {done}")
      if writer is not None:
        writer.write(record)
      last = record
      if bar is not None:
        bar.set_postfix(loss=f"{record['loss']:.4f}")
    if bar is not None:
      bar.update(1)
    if done % config.checkpoint_every == 0 or done == config.num_steps:
      ckpt.save(done, state if axis_name is None else unreplicate(state))
  if bar is not None:
    bar.close()
  ckpt.close()
  final = state if axis_name is None else unreplicate(state)
  if not primary or (stop_after is not None and int(final.step) < config.num_steps):
    return {"step": int(final.step), "state": final}

  train_f = extract_features(eval_model, final.params, final.batch_stats, x_train)
  test_f = extract_features(eval_model, final.params, final.batch_stats, x_test)
  results = {"loss_name": config.loss, "dataset": config.dataset,
             "step": int(final.step), "final_loss": None if last is None else last["loss"],
             "train_seconds": round(time.time() - t0, 1)}
  results.update(evaluate_features(train_f, y_train, test_f, y_test,
                                   num_classes=spec.num_classes,
                                   eval_config=config.eval))
  # Over-fusion diagnostics of both inductive representations: the backbone
  # features (evaluated above) and the projector's embeddings (where the
  # contrastive loss and OAR act).
  test_z = extract_features(eval_model, final.params, final.batch_stats, x_test,
                            embeddings=True)
  results["feature_variance"] = float(diagnostics.embedding_variance(test_f))
  results["embedding_variance"] = float(diagnostics.embedding_variance(test_z))
  results["embedding_rank95"] = float(diagnostics.rank_at_energy(test_z))
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump(results, f, indent=2)
  _plots(workdir, eval_model, final, x_test, y_test, test_f, config)
  results["state"] = final
  return results


def _plots(workdir, model, state, x_test, y_test, test_f, config) -> None:
  """Loss curve, class-ordered affinity of a test batch, feature spectrum."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  records = read_metrics(os.path.join(workdir, "metrics.jsonl"))
  if records:
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot([r["step"] for r in records], [r["loss"] for r in records])
    ax.set_xlabel("step")
    ax.set_ylabel(f"{config.loss} loss")
    ax.set_title("training loss")
    fig.tight_layout()
    fig.savefig(os.path.join(workdir, "loss.png"), dpi=110)
    plt.close(fig)
  n = min(len(y_test), config.batch_size)
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  _, z = model.apply(variables, jnp.asarray(x_test[:n]))
  labels = jnp.asarray(y_test[:n])
  if config.loss == "jsd":
    a = model.apply(variables, z, method=ContrastiveNet.adjacency)
    order = jnp.argsort(labels, stable=True)
    matrix = np.asarray(a[order][:, order])
    style = dict(title="TransFusion adjacency (test batch, by class)", vmin=0.0,
                 vmax=float(np.quantile(matrix, 0.99)) + 1e-12, cmap="magma")
    ordered = labels[order]
  else:
    matrix, ordered = diagnostics.class_ordered_affinity(z, labels)
    style = dict(title="cosine affinity of embeddings (test batch, by class)")
  diagnostics.plot_affinity_heatmap(np.asarray(matrix), np.asarray(ordered),
                                    os.path.join(workdir, "affinity.png"), **style)
  diagnostics.plot_spectrum(
      np.asarray(diagnostics.singular_values(jnp.asarray(test_f))),
      os.path.join(workdir, "spectrum.png"))
