"""The accelerator check of experiments.benchmark (``experiments/configs/benchmark.py:gpu``).

Times, each in float32 and bfloat16 (``compute_dtype``), the library's jitted training step
(``tfjax.step.train_step``) of

* the main job (``experiments/configs/default.py``, its run ``gpu.main_run``: CNN1D on a
  batch of offline MNIST-1D, generated on first use without TensorFlow);
* the blockwise TransFusion head alone (the benchmark's step: raw vectors of width
  ``gpu.head_width``, L = ``head.num_layers``) at n = ``gpu.head_n`` rows;
* a CIFAR-shaped ResNet-18 (3×3 stem, no max-pool; ``gpu.resnet``'s fields) for each method
  of ``gpu.methods`` (``gpu.method_fields``) at each batch of ``gpu.batches``, on random
  images (two views of each, made on the device).

Each step is compiled once (compile time apart), then timed: the median of ``repeats``
steps after ``warmup``, with ``block_until_ready``.  With ``gpu.subprocess`` each runs in a
fresh process (``experiments.benchmark_workers``), so ``peak_bytes_in_use`` is that step's;
rows not started within ``gpu.budget_s`` seconds are reported as not run.  FLOPs: XLA's cost
analysis of the compiled step; for the head, the benchmark's formula (model FLOPs).
"""

from __future__ import annotations

import datetime
import json
import os
import re
import time

from experiments.benchmark_flops import CHIP_PEAKS, chip_peak, model_flops
from experiments.benchmark_workers import GIB, run_worker, worker_step
from experiments.report import write_report
from experiments.runs import run_configs, with_fields


def _csv(value):
  return [v for v in str(value).replace(" ", "").split(",") if v]


def _fields(config) -> dict:
  """The training fields of ``config`` (a base_config's keys), as JSON."""
  from tfjax.config import base_config

  return {k: v for k, v in json.loads(config.to_json()).items() if k in base_config()}


def main_job(config):
  """The training config of the main job's run ``gpu.main_run``."""
  from experiments.configs.default import get_config

  job = get_config()
  job.compare, job.data_dir = config.gpu.main_run, config.gpu.data_dir
  ((_, c),) = run_configs(job)
  return with_fields(c, batch_size=config.gpu.main_batch_size or c.batch_size)


def main_job_row(config, job, dtype: str) -> dict:
  """The main job's step (``job``: :func:`main_job`) on a batch of its data."""
  from tfjax.data.registry import config_dataset_spec

  spec, c = config_dataset_spec(job), with_fields(job, compute_dtype=dtype)
  return {
    "what": f"main job ({c.dataset}, {c.backbone})",
    "method": config.gpu.main_run,
    "n": c.batch_size,
    "dtype": dtype,
    "cfg": {
      "config": _fields(c),
      "x_shape": list(spec.x_shape),
      "data_kind": spec.kind,
      "num_classes": spec.num_classes,
      "data": True,
    },
  }


def head_row(config, dtype: str) -> dict:
  """The blockwise head alone at n = ``gpu.head_n`` (the benchmark's step)."""
  g = config.gpu
  c = with_fields(config, **{"head.compute_dtype": dtype})
  return {
    "what": f"blockwise head (L = {c.head.num_layers}, width {g.head_width})",
    "method": "transfusion",
    "n": g.head_n,
    "dtype": dtype,
    "flops": model_flops(g.head_n, g.head_width, c.head.num_layers),
    "cfg": {
      "config": _fields(c),
      "n": g.head_n,
      "width": g.head_width,
      "implementation": "blockwise",
    },
  }


def resnet_row(config, method: str, batch: int, dtype: str) -> dict:
  """A CIFAR-shaped ResNet-18 step of ``method`` on ``batch`` random images."""
  g = config.gpu
  fields = {**g.resnet.to_dict(), **g.method_fields[method].to_dict()}
  c = with_fields(config, fields, batch_size=batch, compute_dtype=dtype)
  name = {"resnet18": "ResNet-18"}.get(c.backbone, c.backbone)
  return {
    "what": f"{name} ({g.image_size}×{g.image_size} images)",
    "method": method,
    "n": batch,
    "dtype": dtype,
    "cfg": {
      "config": _fields(c),
      "x_shape": [g.image_size, g.image_size, 3],
      "data_kind": "image",
      "num_classes": 10,
    },
  }


def rows(config) -> list:
  """The measurements, in the order they run (the cheap ones first)."""
  g, dtypes, job = config.gpu, _csv(config.gpu.dtypes), main_job(config)
  return (
    [main_job_row(config, job, d) for d in dtypes]
    + [head_row(config, d) for d in dtypes]
    + [
      resnet_row(config, m, int(n), d)
      for n in _csv(g.batches)
      for d in dtypes
      for m in _csv(g.methods)
    ]
  )


def prepare_data(config) -> float:
  """Generates the main job's offline data where it is missing; the seconds it took."""
  from experiments.configs.default import get_config
  from tfjax.data.pipeline import load_arrays

  t = time.time()
  load_arrays(get_config().dataset, "train", config.gpu.data_dir, download=True, take=1)
  return time.time() - t


def measure(config, row: dict, deadline: float, progress: bool) -> dict:
  """One row's step, compiled and timed (in a fresh process with ``gpu.subprocess``)."""
  left = deadline - time.time()
  if left < 1:
    return {"error": f"not run: the time budget ({config.gpu.budget_s:.0f} s) is spent"}
  cfg = dict(row["cfg"], repeats=config.repeats, warmup=config.warmup, describe=True)
  if progress:
    print(row["what"], row["method"], row["n"], row["dtype"], "...", flush=True)
  if config.gpu.subprocess:
    return run_worker("step", cfg, min(left, config.timeout), config.xla_cpu_scheduler)
  try:
    return worker_step(cfg)
  except Exception as e:  # noqa: BLE001 -- one row's failure is that row's note
    return {"error": f"{type(e).__name__}: {e}"}


def run(config, workdir: str, progress: bool = True, command: str | None = None):
  """Measures every row of :func:`rows`; writes ``gpu_<device>.md`` and ``.json`` to
  ``workdir`` (and the markdown to ``gpu.docs_dir`` when set); returns the report."""
  if config.gpu.subprocess:  # should this process start a GPU, it leaves the memory free
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  import jax

  report = {"command": command, "jax": jax.__version__, "data_s": prepare_data(config)}
  report["date"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
  deadline = time.time() + config.gpu.budget_s
  report["rows"] = [dict(r, **measure(config, r, deadline, progress)) for r in rows(config)]
  kind = next((r["device_kind"] for r in report["rows"] if "device_kind" in r), "unknown")
  report.update(device_kind=kind, config=json.loads(config.to_json()))
  return write(config, workdir, report)


def write(config, workdir: str, report: dict) -> dict:
  """The table (printed) in ``workdir`` and, with ``gpu.docs_dir``, in the docs."""
  for r in report["rows"]:
    flops = r.get("flops") or r.get("xla_flops")
    if r.get("step_s") and flops:
      r["flops_per_s"] = flops / r["step_s"]
      peak = chip_peak(report["device_kind"], r["dtype"])
      r["fraction_of_peak"] = None if peak is None else r["flops_per_s"] / peak
  slug = re.sub(r"[^a-z0-9]+", "_", report["device_kind"].lower()).strip("_")
  md = markdown(config, report)
  write_report(workdir, md, report, name=f"gpu_{slug}")
  if config.gpu.docs_dir:
    os.makedirs(config.gpu.docs_dir, exist_ok=True)
    with open(os.path.join(config.gpu.docs_dir, f"gpu_{slug}.md"), "w") as f:
      f.write(md)
  print(md)
  return report


def _cell(value, spec: str, scale: float = 1.0) -> str:
  return "n/a" if value is None else format(value / scale, spec)


def markdown(config, report: dict) -> str:
  """The report as markdown: what ran where, then one row per step."""
  peaks = ", ".join(f"{name} {fp32:g} / {bf16:g}" for _, name, fp32, bf16 in CHIP_PEAKS)
  lines = [
    f"# Accelerator check: tfjax training steps on {report['device_kind']}",
    "",
    f"Command: `{report['command']}`",
    "",
    f"Date: {report['date']}; device: {report['device_kind']}; JAX {report['jax']}; "
    f"main job's data ready in {report['data_s']:.1f} s.",
    "",
    f"Each step: `tfjax.step.train_step` jitted, compiled once (compile s: building the "
    f"state and compiling), then the median of {config.repeats} timed steps after "
    f"{config.warmup} warm-up step(s). Main job and images: examples/s = batch / step "
    f"(each example in {config.num_views} views); head: rows/s. FLOPs: XLA's cost analysis "
    "(head: model FLOPs of the formula in experiments/benchmark_flops.py). % of peak: of the "
    "chip's dense peak, float32 as TF32 (TFLOP/s float32 / bfloat16: "
    f"{peaks}; n/a for other devices). Peak GiB: the device's `peak_bytes_in_use` in the "
    "step's process (n/a where the device gives none); plan: XLA's compiled plan.",
    "",
    "| step | method | batch | dtype | compile s | step ms | examples/s | TFLOP/s | "
    "% of peak | peak GiB | plan GiB | note |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for r in report["rows"]:
    step, frac = r.get("step_s"), r.get("fraction_of_peak")
    cells = [
      r["what"],
      r["method"],
      r["n"],
      r["dtype"],
      _cell(r.get("compile_s"), ".1f"),
      _cell(step, ".2f", 1e-3),
      _cell(None if step is None else r["n"] / step, ".0f"),
      _cell(r.get("flops_per_s"), ".3g", 1e12),
      "n/a" if frac is None else f"{100 * frac:.1f}%",
      _cell(r.get("device_peak_bytes"), ".2f", GIB),
      _cell((r.get("plan_bytes") or {}).get("total"), ".2f", GIB),
      r.get("error") or "",
    ]
    lines.append("| " + " | ".join(map(str, cells)) + " |")
  return "\n".join(lines) + "\n"
