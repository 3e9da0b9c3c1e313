"""Does fusion depth help?  TransFusion's claim, under the validated recipes.

    python -m experiments.depth --noprogress
    python -m experiments.depth --config=experiments/configs/depth.py:tiny   # smoke test

TransFusion stacks fusion blocks so that, layer by layer, each sample attends
more to its own cluster; the claim is that the features it trains get better
with depth.  For each training target, head form and depth L (protocol:
experiments/configs/depth.py) and each seed, on the validation split:

* the backbone's features: kNN and linear probe (inductive);
* the head's output: kNN on the fused features (transductive: a row depends
  on its batch);
* the mechanism, on one validation batch (its first ``probe_batch``
  examples): the attention mass each row puts on its own class, per layer
  (chance = (m−1)/(n−1)); the rank at 95 % energy of the fused features
  entering the truncated block; the fraction of uniform ("dead") adjacency
  rows; and the norm of the training loss's gradient that reaches the
  backbone's parameters (two views with the run's augmentation, BatchNorm in
  training mode, as in a training step).  Dead rows at the last logged
  training step come from the run's metrics.

Beside them, the randomly initialised backbone with BatchNorm statistics of
the data (the fair baseline), over the same seeds.  Writes results.md,
results.json and depth.png.  Seeds run in the outer loop: an interrupted job
has every depth at seed 0 before any at seed 1, and a rerun resumes.
"""

from __future__ import annotations

import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments import runs
from experiments.common import cli
from experiments.report import markdown_table, mean_std, pm, pyplot, save, write_report

FORMS = ("learned", "tied", "norm", "none")
METRICS = (
  "knn",
  "linear",
  "knn_head",
  "own_mass",
  "fused_rank",
  "dead_rows",
  "uniform_rows",
  "backbone_grad",
)


def settings(config) -> list:
  """``[(run, form, depth, config)]``: every setting, its config resolved."""
  out = []
  for name, base in runs.run_configs(config):
    for form in runs.names(config.forms[name], FORMS, f"forms.{name}"):
      for depth in config.depths:
        fields = {"head.num_layers": int(depth), "head.final_projection": form}
        out.append((name, form, int(depth), runs.with_fields(base, fields)))
  return out


def run(config, workdir: str, *, progress: bool = True):
  grid = settings(config)
  seed_list = runs.seeds(config)
  runs.validate([c for *_, c in grid])
  per_seed = {setting[:3]: [] for setting in grid}
  for seed in seed_list:
    for name, form, depth, c in grid:
      run_dir = os.path.join(workdir, name, f"{form}_L{depth}", f"seed{seed}")
      res = runs.train_once(runs.with_fields(c, seed=seed), run_dir, progress)
      if res["evaluated_on"] != "validation":
        raise RuntimeError(f"{run_dir} was evaluated on {res['evaluated_on']}")
      res.update(mechanism(run_dir, config.probe_batch))
      per_seed[name, form, depth].append(res)
  rows = [
    {"run": name, "form": form, "depth": depth, "seeds": len(rs), **mean_std(rs, METRICS)}
    | {"own_mass_layers": np.mean([r["own_mass_layers"] for r in rs], 0).round(3).tolist()}
    | {"chance_mass": float(np.mean([r["chance_mass"] for r in rs]))}
    for (name, form, depth), rs in per_seed.items()
  ]
  base = runs.random_init(grid[0][3], seed_list, ("knn", "linear"), fields={"eval.head_knn": False})
  for row in rows:
    print(json.dumps(row), flush=True)
  report(config, workdir, rows, base)
  return rows


def mechanism(run_dir: str, batch: int) -> dict:
  """The mechanism's numbers of the finished run in ``run_dir`` on the first
  ``batch`` validation examples (see the module docstring)."""
  from tfjax import diagnostics, loading, recipes
  from tfjax.data.augment import get_augmentation
  from tfjax.data.pipeline import read_batch
  from tfjax.models import uniform_row_fraction
  from tfjax.networks import ContrastiveNet
  from tfjax.step import global_index_views

  r = loading.load_run(run_dir)
  b = read_batch(r.source("validation"), np.arange(batch))
  x, y = jnp.asarray(b["x"]), np.asarray(b["label"])
  head, params = r.model.head, r.variables["params"]
  head_vars = {"params": params.get("head", {})}  # none with a parameter-free head
  _, z = r.model.apply(r.variables, x)
  a, inter = head.apply(head_vars, z, mutable=["intermediates"])
  layers = [
    inter["intermediates"][f"fusion_{i}"]["adjacency"][0] for i in range(head.num_layers - 1)
  ]
  same = (y[:, None] == y[None, :]) & ~np.eye(batch, dtype=bool)
  own = [float((np.asarray(adj) * same).sum(1).mean()) for adj in [*layers, a]]
  fused = head.apply(head_vars, z, method=head.fuse)

  c, views = r.config, r.config.num_views
  augment = get_augmentation(c.augment, recipes.data_kind(c))
  flat = global_index_views(augment, jax.random.key(c.seed), x, c.augment_strength, views, 0)
  flat = flat.reshape((views * batch,) + x.shape[1:])
  groups = jnp.tile(jnp.arange(batch, dtype=jnp.int32), views)
  labels = jnp.tile(jnp.asarray(y, jnp.int32), views) if c.labels_in_loss else None

  def loss(backbone):
    p = {**params, "backbone": backbone}
    (_, zv), _ = r.model.apply(
      {"params": p, "batch_stats": r.variables["batch_stats"]},
      flat,
      train=True,
      mutable=["batch_stats"],
    )
    out, _ = r.model.apply(
      {"params": p}, zv, groups, labels, views, method=ContrastiveNet.head_loss, mutable=True
    )
    return out

  grad = jax.grad(loss)(params["backbone"])
  return {
    "own_mass": own[-1],
    "own_mass_layers": own,
    "chance_mass": float((same.sum(1) / (batch - 1)).mean()),
    "fused_rank": float(diagnostics.rank_at_energy(fused, 0.95)),
    "dead_rows": float(uniform_row_fraction(a)),
    "backbone_grad": float(optax.global_norm(grad)),
  }


def label(row) -> str:
  target = "class targets" if row["run"] == "transfusion" else "self-supervised"
  return f"{target}, {row['form']}"


def results_markdown(config, rows, base) -> str:
  table = []
  for row in rows:
    sigma = np.hypot(row["knn_std"], base["knn_std"])
    margin = f"{(row['knn'] - base['knn']) / sigma:+.1f}" if sigma > 0 else "n/a"
    table.append(
      {
        "setting": label(row),
        "L": row["depth"],
        **{k: pm(row[k], row[f"{k}_std"]) for k in ("knn", "linear", "knn_head")},
        "margin (σ)": margin,
        "own-class mass per layer": " → ".join(f"{m:.2f}" for m in row["own_mass_layers"]),
        "fused rank": pm(row["fused_rank"], row["fused_rank_std"], 1),
        "dead rows (probe / train)": f"{row['dead_rows']:.2f} / {row['uniform_rows']:.2f}",
        "‖∂L/∂θ_backbone‖": pm(row["backbone_grad"], row["backbone_grad_std"], 4),
        "seeds": row["seeds"],
      }
    )
  return (
    f"# Fusion depth, {config.dataset}, validation split ({config.validation_fraction:.0%} "
    "of the training split)\n\n"
    + markdown_table(table, list(table[0]))
    + f"\n\nRandom-init {config.backbone} (BatchNorm statistics of the data): kNN "
    f"{pm(base['knn'], base['knn_std'])}, linear {pm(base['linear'], base['linear_std'])}. "
    "Mean ± std over seeds; margin = (kNN − random) / sqrt(std² + std_random²). "
    "knn_head is transductive; the mechanism columns are measured on the first "
    f"{config.probe_batch} validation examples (own-class mass by chance "
    f"{rows[0]['chance_mass']:.2f}; dead rows also at the last logged training step).\n"
  )


def plot(rows, path: str) -> None:
  plt = pyplot()
  fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
  for key in dict.fromkeys((r["run"], r["form"]) for r in rows):
    rs = [r for r in rows if (r["run"], r["form"]) == key]
    depth = [r["depth"] for r in rs]
    for ax, metric in zip(axes, ("knn", "knn_head", "backbone_grad")):
      ax.errorbar(
        depth,
        [r[metric] for r in rs],
        [r[f"{metric}_std"] for r in rs],
        marker="o",
        capsize=3,
        label=label(rs[0]),
      )
  for ax, title in zip(
    axes, ("backbone kNN", "head-output kNN (transductive)", "gradient norm reaching the backbone")
  ):
    ax.set(title=title, xlabel="head layers L")
  axes[0].legend(fontsize=8)
  save(fig, path)


def report(config, workdir: str, rows, base) -> None:
  md = results_markdown(config, rows, base)
  write_report(workdir, md, {"rows": rows, "random_init": base})
  plot(rows, os.path.join(workdir, "depth.png"))
  print("\n" + md)
  print(f"wrote {workdir}/results.md, results.json, depth.png")


def main(argv=None):
  return cli(run, "depth", argv, __doc__)


if __name__ == "__main__":
  main(sys.argv[1:])
