"""Benchmark: dense vs blockwise TransFusion training steps (time, memory, FLOP/s).

    python -m experiments.benchmark --config=experiments/configs/benchmark.py[:quick|bf16|tiny] \
        [--config.sizes=512,2048] [--config.widths=512,128] [--config.head.num_layers=5] \
        [--config.memory_cap_gib=2] [--config.xla_cpu_scheduler=memory|concurrency] \
        [--workdir=workdirs/benchmark/]

What is measured and what it shows: docs/benchmark/README.md; every option is a field of
``experiments/configs/benchmark.py``.  Each (width w, batch n, implementation) runs in a fresh
subprocess (with the chosen XLA CPU scheduler, set before JAX starts) that builds the config's
train state (raw vectors of width w, a ``TransFusionHead``, Adam) and times the library's jitted
``tfjax.step.train_step`` on ``{"x": [n/2, w]}`` (two views at strength 0): the median step time
after a warm-up step, XLA's compiled plan (temp + arguments + outputs − aliased), the measured
peak (CPU: ``VmHWM`` reset after compilation minus the RSS after JAX started; accelerators:
``peak_bytes_in_use``), and FLOP/s against a large ``jnp.dot`` timed before and after (the
higher is the peak).  Dense configs whose plan exceeds ``max_ram_gib`` (0: 60% of available
RAM) are skipped; ``memory_cap_gib`` finds the largest n whose plan fits, compile only.
Writes ``benchmark.json`` and ``benchmark.md`` (printed too); nothing resumes.  The workers
are in ``experiments/benchmark_workers.py``, the FLOP formulas in ``benchmark_flops.py``.

    python -m experiments.benchmark --config=experiments/configs/benchmark.py:gpu

runs the accelerator check instead (``experiments/benchmark_gpu.py``: the main job's step,
ResNet-18 steps of SimCLR, SupCon and TransFusion, the blockwise head at n = 65,536, in
float32 and bfloat16) and writes ``gpu_<device>.md`` (docs/benchmark/README.md, "On a GPU").
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time

from experiments.benchmark_flops import executed_flops, model_flops
from experiments.benchmark_workers import GIB, proc_bytes, run_worker
from experiments.report import write_report
from tfjax.runtime import CPU_SCHEDULERS


def step_description(config) -> str:
  """What the timed step is, in words (written above the table)."""
  return (
    f"tfjax.step.train_step (jitted, state donated): backbone {config.backbone!r}, "
    f"embed_dim {config.embed_dim} (0: no projector), TransFusion head with the "
    f"{config.loss} loss over {config.num_views} views (augmentation "
    f"{config.augment or 'default'!r} at strength {config.augment_strength}) of "
    f"n/{config.num_views} sources, {config.optimizer} (weight decay "
    f"{config.weight_decay}, {config.schedule} learning rate {config.learning_rate})"
  )


def _fmt(value, spec: str, scale: float = 1.0) -> str:
  return "—" if value is None else format(value / scale, spec)


def markdown(report) -> str:
  peak, matmul = report["matmul_peak_flops_per_s"], report["matmul"]
  lines = [
    "# TransFusion step benchmark: dense vs blockwise",
    "",
    f"Device: {report['device']}; matmul peak (jnp.dot {matmul[0]['size']}², "
    f"{matmul[0]['dtype']}): {peak / 1e9:.1f} GFLOP/s (max of {len(matmul)} measurements: "
    + ", ".join(f"{m['flops_per_s'] / 1e9:.1f}" for m in matmul)
    + "). Load average at start/end: "
    f"{report['load_start']} / {report['load_end']}.",
    "",
    f"L = {report['layers']}, block_size = {report['block_size']}, "
    f"compute dtype = {report['compute_dtype']}, XLA CPU scheduler = "
    f"{report.get('xla_cpu_scheduler', 'memory')}. FLOPs per step = "
    "3·[(L−1)(2nd(2h+d) + 2n²h + 2n²d) + 4ndh + 2n²h] (model FLOPs, h = d).",
    "",
  ]
  if report.get("step"):
    lines += [f"Step: {report['step']}.", ""]
  if report.get("command"):
    lines[1:1] = ["", f"Command: `{report['command']}`"]
  lines += [
    "| impl | width | n | step s | model GFLOP | GFLOP/s | % of peak | "
    "XLA plan GiB | peak RSS−base GiB | device peak GiB | note |",
    "|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for r in report["results"]:
    step = r.get("step_s")
    rate = None if step is None else r["model_flops"] / step
    cells = [
      r["implementation"],
      r["width"],
      r["n"],
      _fmt(step, ".3f"),
      _fmt(r["model_flops"], ".1f", 1e9),
      _fmt(rate, ".1f", 1e9),
      "—" if rate is None else f"{100 * rate / peak:.0f}%",
      _fmt((r.get("plan_bytes") or {}).get("total"), ".2f", GIB),
      _fmt(r.get("peak_rss_minus_baseline_bytes"), ".2f", GIB),
      _fmt(r.get("device_peak_bytes"), ".2f", GIB),
      r.get("skipped") or r.get("error") or "",
    ]
    lines.append("| " + " | ".join(map(str, cells)) + " |")
  if report.get("max_n"):
    lines += [
      "",
      f"Largest n whose XLA plan fits {report['memory_cap_gib']} GiB (compile only, "
      f"multiple of {report['cap_granularity']}):",
      "",
      "| impl | width | largest n |",
      "|---|---|---|",
    ]
    lines += [
      f"| {m['implementation']} | {m['width']} | {m.get('largest_n', m.get('error'))} |"
      for m in report["max_n"]
    ]
  return "\n".join(lines) + "\n"


def _csv(value, cast=str):
  return [cast(v) for v in str(value).replace(" ", "").split(",") if v]


def check(config):
  """``(sizes, widths, implementations)`` of ``config``, checked before any subprocess."""
  if config.xla_cpu_scheduler not in CPU_SCHEDULERS:
    raise ValueError(
      f"unknown xla_cpu_scheduler {config.xla_cpu_scheduler!r}; choose one of {CPU_SCHEDULERS}"
    )
  sizes, widths = _csv(config.sizes, int), _csv(config.widths, int)
  implementations = _csv(config.implementations)
  for impl in implementations:
    if impl not in ("dense", "blockwise"):
      raise ValueError(f"unknown implementation {impl!r} in {config.implementations!r}")
  v = config.num_views
  odd = [n for n in sizes + [config.cap_granularity] if n % v]
  if odd:
    raise ValueError(
      f"sizes and cap_granularity must be multiples of "
      f"num_views = {v} (views of n/{v} sources), got {odd}"
    )
  return sizes, widths, implementations


def _load():
  return [round(x, 2) for x in os.getloadavg()]


def _worker(config, progress: bool, kind: str, cfg: dict) -> dict:
  """``run_worker`` with ``config``'s timeout and scheduler; one line per call on stderr."""
  if progress:
    print(kind, {k: v for k, v in cfg.items() if k != "config"}, "...", file=sys.stderr, flush=True)
  r = run_worker(kind, cfg, float(config.timeout), config.xla_cpu_scheduler)
  if progress and kind == "step":
    print(
      json.dumps({k: r.get(k) for k in ("step_s", "skipped", "error")}), file=sys.stderr, flush=True
    )
  return r


def _measure_step(worker, config, fields, n: int, width: int, impl: str, max_bytes) -> dict:
  """The result row of one (n, width, implementation): the step worker's, plus FLOPs."""
  layers, t = config.head.num_layers, time.time()
  r = worker(
    "step",
    {
      "config": fields,
      "n": n,
      "width": width,
      "implementation": impl,
      "repeats": config.repeats,
      "warmup": config.warmup,
      "max_bytes": max_bytes,
    },
  )
  r.update(
    implementation=impl,
    n=n,
    width=width,
    load=_load(),
    wall_s=time.time() - t,
    model_flops=model_flops(n, width, layers),
    executed_flops=executed_flops(n, width, layers, impl),
  )
  return r


def run(config, workdir: str, progress: bool = True, command: str | None = None):
  """Runs the benchmark of ``config``; writes ``benchmark.json`` and ``benchmark.md`` to
  ``workdir`` and returns the report.  ``progress``: one line per subprocess on stderr;
  ``command``: the command line, written at the top of the table.  A config with ``gpu``
  fields (``:gpu``) runs the accelerator check instead (experiments/benchmark_gpu.py)."""
  if "gpu" in config:
    from experiments import benchmark_gpu

    return benchmark_gpu.run(config, workdir, progress, command)
  sizes, widths, implementations = check(config)
  fields = training_fields(config)
  worker = functools.partial(_worker, config, progress)
  report = settings(config, command)
  report["matmul"] = [worker("matmul", matmul_config(config))]  # the peak, before ...
  report["device"] = report["matmul"][0].get("device", "?")
  max_bytes = step_memory_limit(config, report["matmul"][0])
  report["results"] = [
    _measure_step(worker, config, fields, n, width, impl, max_bytes)
    for width in widths
    for n in sizes
    for impl in implementations
  ]
  report["matmul"].append(worker("matmul", matmul_config(config)))  # ... and after
  if config.memory_cap_gib > 0:
    report.update(largest_n(worker, config, fields, widths, implementations))
  report["load_end"] = _load()
  return write(workdir, report)


def training_fields(config) -> dict:
  """The fields of ``config`` that are training fields (a base_config's keys), as JSON."""
  from tfjax.config import base_config

  return {k: v for k, v in json.loads(config.to_json()).items() if k in base_config()}


def settings(config, command) -> dict:
  """The report's head: what every step shares."""
  return {
    "layers": config.head.num_layers,
    "block_size": config.head.block_size,
    "compute_dtype": config.head.compute_dtype or "none",
    "xla_cpu_scheduler": config.xla_cpu_scheduler,
    "command": command,
    "step": step_description(config),
    "load_start": _load(),
    "cpu_count": os.cpu_count(),
    "config": json.loads(config.to_json()),
  }


def matmul_config(config) -> dict:
  dtype = config.head.compute_dtype
  return {"size": config.matmul_size, "dtype": dtype or "float32"}


def step_memory_limit(config, matmul: dict):
  """Bytes a step's plan may take: ``max_ram_gib``, else 60% of the available RAM on CPU."""
  if config.max_ram_gib:
    return config.max_ram_gib * GIB
  avail = proc_bytes("MemAvailable", "/proc/meminfo")
  return 0.6 * avail if avail and matmul.get("platform", "cpu") == "cpu" else None


def largest_n(worker, config, fields, widths, implementations) -> dict:
  """The largest n whose plan fits ``memory_cap_gib`` per width and implementation."""
  cap = {"config": fields, "cap_bytes": config.memory_cap_gib * GIB}
  cap["granularity"] = config.cap_granularity
  return {
    "memory_cap_gib": config.memory_cap_gib,
    "cap_granularity": config.cap_granularity,
    "max_n": [
      {
        **worker("max_n", dict(cap, width=width, implementation=impl)),
        "implementation": impl,
        "width": width,
      }
      for width in widths
      for impl in implementations
    ],
  }


def write(workdir: str, report: dict) -> dict:
  """The FLOP rates against the measured peak; ``benchmark.md`` (printed) and ``.json``."""
  peaks = [m["flops_per_s"] for m in report["matmul"] if "flops_per_s" in m]
  report["matmul_peak_flops_per_s"] = peak = max(peaks) if peaks else float("nan")
  for r in report["results"]:
    if r.get("step_s"):
      r["model_flops_per_s"] = r["model_flops"] / r["step_s"]
      r["fraction_of_peak"] = r["model_flops_per_s"] / peak
      r["executed_flops_per_s"] = r["executed_flops"] / r["step_s"]
  md = markdown(report)
  write_report(workdir, md, report, name="benchmark")
  print(md)
  return report


def main(argv=None):
  from experiments.common import cli

  argv = list(sys.argv[1:] if argv is None else argv)

  command = " ".join(["python -m experiments.benchmark"] + argv)
  return cli(
    lambda config, workdir, progress=True: run(config, workdir, progress, command=command),
    "benchmark",
    argv,
    __doc__,
  )


if __name__ == "__main__":
  main()
