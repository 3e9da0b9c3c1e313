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
Writes ``benchmark.json`` and ``benchmark.md`` (printed too); nothing resumes.
"""

from __future__ import annotations

import functools
import json
import os
import statistics
import subprocess
import sys
import time

from experiments.report import write_report
from tfjax.runtime import CPU_SCHEDULERS, use_low_memory_cpu_scheduler

GIB = 2.0**30


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


def model_flops(
  n: int, width: int, layers: int, keys: int | None = None, qk_width: int | None = None
) -> int:
  """Matmul FLOPs of one training step (multiply-add = 2; d = width, h = Q/K width, N keys).

  fwd = (L−1)·[2nd(2h + d) + 2nNh + 2nNd] + [2nd·2h + 2nNh]; step = 3·fwd (backward = 2 ×
  forward).  The rest of the step has no matmul (the tests count every ``dot_general``).
  """
  d, h, big_n = width, qk_width or width, keys or n
  fwd = (
    (layers - 1) * (2 * n * d * (2 * h + d) + 2 * n * big_n * h + 2 * n * big_n * d)
    + 2 * n * d * 2 * h
    + 2 * n * big_n * h
  )
  return 3 * fwd


def executed_flops(
  n: int,
  width: int,
  layers: int,
  implementation: str,
  keys: int | None = None,
  qk_width: int | None = None,
) -> int:
  """Matmul FLOPs executed: the blockwise path recomputes blocks, (L−1)·[6nd(2h + d) +
  2nN(4h + 3d)] + [12ndh + 10nNh]."""
  if implementation == "dense":
    return model_flops(n, width, layers, keys, qk_width)
  d, h, big_n = width, qk_width or width, keys or n
  return (
    (layers - 1) * (6 * n * d * (2 * h + d) + 2 * n * big_n * (4 * h + 3 * d))
    + 12 * n * d * h
    + 10 * n * big_n * h
  )


def _proc_bytes(field: str, path: str = "/proc/self/status"):
  """A ``FIELD: N kB`` line of ``path`` in bytes (None without ``/proc``)."""
  try:
    with open(path) as f:
      return next((int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":")), None)
  except OSError:
    return None


def _reset_peak_rss() -> bool:
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
    return True
  except OSError:
    return False


def _init_jax():
  """Starts JAX and imports the training modules (before the RSS baseline is read, so the
  peak counts the step's buffers and executable, not the imported modules)."""
  import jax
  import jax.numpy as jnp
  import tfjax.state  # noqa: F401
  import tfjax.devices  # noqa: F401

  jax.block_until_ready(jnp.zeros(()) + 1)
  return jax, jnp


def step_config(cfg):
  """The training config (a locked ``base_config``) of ``cfg["config"]``'s base fields with
  the head's implementation ``cfg["implementation"]``."""
  from tfjax.config import base_config, validate

  config = base_config()
  config.update(cfg["config"])
  config.head.implementation = cfg["implementation"]
  validate(config, num_devices=1)
  return config


def _build_step(cfg, abstract=False):
  """(``tfjax.devices.compile_step(1)``, (state, batch, key)) for one config; the batch is
  ``{"x": [n/V, width]}`` (V views: n rows for the head), a ShapeDtypeStruct if
  ``abstract`` (enough to compile and plan)."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from tfjax.state import create_train_state
  from tfjax.devices import compile_step

  n, w = cfg["n"], cfg["width"]
  config = step_config(cfg)
  views = config.num_views
  if n % views:
    raise ValueError(
      f"n must be a multiple of num_views = {views} (views of n/{views} sources), got {n}"
    )
  state = create_train_state(
    config, jax.random.key(0), x_shape=(w,), num_classes=2, data_kind="vector"
  )
  shape = (n // views, w)
  batch = {
    "x": jax.ShapeDtypeStruct(shape, jnp.float32)
    if abstract
    else jnp.asarray(np.random.default_rng(0).standard_normal(shape, dtype=np.float32))
  }
  return compile_step(1), (state, batch, jax.random.key(1))


def _plan_bytes(compiled):
  m = compiled.memory_analysis()
  if m is None:
    return None
  out = {
    k: int(getattr(m, k + "_size_in_bytes", 0) or 0)
    for k in ("temp", "argument", "output", "alias", "generated_code")
  }
  out["total"] = out["temp"] + out["argument"] + out["output"] - out["alias"]
  return out


def worker_step(cfg):
  """Compiles and times one config's step; its plan, measured peaks and loss."""
  import resource

  baseline = _proc_bytes("VmRSS")
  jax, _ = _init_jax()
  baseline = _proc_bytes("VmRSS") or baseline
  t0 = time.perf_counter()
  step, (state, batch, key) = _build_step(cfg)
  compiled = step.lower(state, batch, key).compile()
  compile_s = time.perf_counter() - t0
  plan = _plan_bytes(compiled)
  res = {"compile_s": compile_s, "plan_bytes": plan, "baseline_rss_bytes": baseline}
  limit = cfg.get("max_bytes")
  if plan is not None and limit and plan["total"] > limit:
    res["skipped"] = (
      f"needs {plan['total'] / GIB:.1f} GiB (XLA plan) > {limit / GIB:.1f} GiB allowed"
    )
    return res
  device = jax.devices()[0]
  reset = _reset_peak_rss()
  times, warmup = [], cfg.get("warmup", 1)
  for i in range(cfg["repeats"] + warmup):
    t = time.perf_counter()
    state, metrics = compiled(state, batch, key)
    jax.block_until_ready((state, metrics))
    if i >= warmup:  # the first calls warm up
      times.append(time.perf_counter() - t)
  res.update(step_s=statistics.median(times), step_times_s=times, loss=float(metrics["loss"]))
  peak = _proc_bytes("VmHWM")
  if peak is not None and baseline is not None:
    res.update(peak_rss_minus_baseline_bytes=peak - baseline, peak_rss_reset_after_compile=reset)
  res["ru_maxrss_minus_baseline_bytes"] = resource.getrusage(
    resource.RUSAGE_SELF
  ).ru_maxrss * 1024 - (baseline or 0)
  stats = device.memory_stats() if hasattr(device, "memory_stats") else None
  if stats and "peak_bytes_in_use" in stats:
    res["device_peak_bytes"] = int(stats["peak_bytes_in_use"])
  return res


def worker_plan(cfg):
  """Compile only: XLA's planned bytes for one config."""
  _init_jax()
  step, args = _build_step(cfg, abstract=True)
  return {"plan_bytes": _plan_bytes(step.lower(*args).compile())}


def worker_max_n(cfg):
  """Largest n whose XLA plan fits cfg["cap_bytes"] (compile only)."""
  _init_jax()
  n_fit, probes = largest_n_within(
    cfg["cap_bytes"],
    lambda n: worker_plan(dict(cfg, n=n))["plan_bytes"]["total"],
    cfg["granularity"],
  )
  return {"largest_n": n_fit, "probes": {str(k): v for k, v in sorted(probes.items())}}


def worker_matmul(cfg):
  """FLOP/s of a large square jnp.dot (the machine's matmul peak)."""
  jax, jnp = _init_jax()
  size, dtype = cfg["size"], jnp.dtype(cfg.get("dtype", "float32"))
  a = jax.random.normal(jax.random.key(0), (size, size), dtype)
  b = jax.random.normal(jax.random.key(1), (size, size), dtype)
  f = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32))
  jax.block_until_ready(f(a, b))
  times = []
  for _ in range(cfg.get("repeats", 3)):
    t = time.perf_counter()
    jax.block_until_ready(f(a, b))
    times.append(time.perf_counter() - t)
  best = min(times)
  return {
    "size": size,
    "dtype": str(dtype),
    "seconds": best,
    "flops_per_s": 2 * size**3 / best,
    "device": str(jax.devices()[0]),
    "platform": jax.devices()[0].platform,
  }


WORKERS = {"step": worker_step, "plan": worker_plan, "matmul": worker_matmul, "max_n": worker_max_n}


def run_worker(kind: str, cfg: dict, timeout: float, cpu_scheduler: str = "memory") -> dict:
  """Runs one worker in a fresh Python process; returns its JSON (or error)."""
  cmd = [sys.executable, "-m", "experiments.benchmark", "--worker", kind, json.dumps(cfg)]
  env = {**os.environ, "TFJAX_XLA_CPU_SCHEDULER": cpu_scheduler}
  env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  try:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
  except subprocess.TimeoutExpired:
    return {"error": f"timed out after {timeout:.0f} s"}
  for line in reversed(proc.stdout.strip().splitlines()):
    if line.startswith("{"):
      return json.loads(line)
  return {"error": f"exit {proc.returncode}: {proc.stderr.strip()[-800:]}"}


def largest_n_within(cap_bytes, plan_total, granularity, n_max=1 << 20):
  """Largest n (multiple of granularity) with plan_total(n) <= cap_bytes, by doubling from
  ``granularity`` then bisection; returns (n, {n: bytes})."""
  cache = {}

  def fits(n):
    if n not in cache:
      cache[n] = plan_total(n)
    return None if cache[n] is None else cache[n] <= cap_bytes

  lo, hi = 0, granularity
  while hi <= n_max:
    ok = fits(hi)
    if ok is None:
      return None, cache
    if not ok:
      break
    lo, hi = hi, hi * 2
  if hi > n_max:
    return lo, cache
  while hi - lo > granularity:
    mid = (lo + hi) // 2 // granularity * granularity
    if mid <= lo:
      break
    lo, hi = (mid, hi) if fits(mid) else (lo, mid)
  return lo, cache


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
  ``command``: the command line, written at the top of the table."""
  sizes, widths, implementations = check(config)
  from tfjax.config import base_config

  fields = {k: v for k, v in json.loads(config.to_json()).items() if k in base_config()}
  compute_dtype = config.head.compute_dtype or "none"
  worker = functools.partial(_worker, config, progress)
  report = {
    "layers": config.head.num_layers,
    "block_size": config.head.block_size,
    "compute_dtype": compute_dtype,
    "xla_cpu_scheduler": config.xla_cpu_scheduler,
    "command": command,
    "step": step_description(config),
    "load_start": _load(),
    "cpu_count": os.cpu_count(),
    "matmul": [],
    "results": [],
    "config": json.loads(config.to_json()),
  }
  matmul_cfg = {
    "size": config.matmul_size,
    "dtype": "float32" if compute_dtype == "none" else compute_dtype,
  }
  report["matmul"].append(worker("matmul", matmul_cfg))
  report["device"] = report["matmul"][0].get("device", "?")
  avail = _proc_bytes("MemAvailable", "/proc/meminfo")
  max_bytes = (
    config.max_ram_gib * GIB
    if config.max_ram_gib
    else 0.6 * avail
    if avail and report["matmul"][0].get("platform", "cpu") == "cpu"
    else None
  )
  report["results"] = [
    _measure_step(worker, config, fields, n, width, impl, max_bytes)
    for width in widths
    for n in sizes
    for impl in implementations
  ]
  report["matmul"].append(worker("matmul", matmul_cfg))
  peaks = [m["flops_per_s"] for m in report["matmul"] if "flops_per_s" in m]
  report["matmul_peak_flops_per_s"] = peak = max(peaks) if peaks else float("nan")
  for r in report["results"]:
    if r.get("step_s"):
      r["model_flops_per_s"] = r["model_flops"] / r["step_s"]
      r["fraction_of_peak"] = r["model_flops_per_s"] / peak
      r["executed_flops_per_s"] = r["executed_flops"] / r["step_s"]
  if config.memory_cap_gib > 0:
    report.update(
      memory_cap_gib=config.memory_cap_gib,
      cap_granularity=config.cap_granularity,
      max_n=[
        {
          **worker(
            "max_n",
            {
              "config": fields,
              "width": width,
              "implementation": impl,
              "cap_bytes": config.memory_cap_gib * GIB,
              "granularity": config.cap_granularity,
            },
          ),
          "implementation": impl,
          "width": width,
        }
        for width in widths
        for impl in implementations
      ],
    )
  report["load_end"] = _load()
  md = markdown(report)
  write_report(workdir, md, report, name="benchmark")
  print(md)
  return report


def main(argv=None):
  argv = list(sys.argv[1:] if argv is None else argv)
  if argv[:1] == ["--worker"]:  # a subprocess of run_worker
    kind, cfg = argv[1], argv[2]
    # Before JAX starts: XLA reads its flags once per process.
    use_low_memory_cpu_scheduler(os.environ.get("TFJAX_XLA_CPU_SCHEDULER", "memory"))
    print(json.dumps(WORKERS[kind](json.loads(cfg))), flush=True)
    return None
  from experiments.common import cli

  command = " ".join(["python -m experiments.benchmark"] + argv)
  return cli(
    lambda config, workdir, progress=True: run(config, workdir, progress, command=command),
    "benchmark",
    argv,
    __doc__,
  )


if __name__ == "__main__":
  main()
