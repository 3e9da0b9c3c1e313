"""Benchmark: dense vs blockwise TransFusion training steps (time, memory, FLOP/s).

    python -m experiments.benchmark [--quick] [--sizes 512 2048 ...]
        [--widths 512 128] [--layers 5] [--block-size 512]
        [--memory-cap-gib 2] [--xla-cpu-scheduler memory|concurrency]
        [--out results/benchmark/]

For every (width w, batch n, implementation) one fresh subprocess builds a
``TransFusionHead(num_layers=L, implementation=...)`` and times one jitted
training step: ``TransFusionHead.loss`` (JSD against random groups of 2 views
per source) forward + backward + an optax Adam update.  Reported:

* ``step_s``: median wall time of the timed steps (after one warm-up step);
* memory: XLA's compiled plan (``memory_analysis()``: temp + arguments +
  outputs − aliased), and the measured peak: on CPU the process's peak RSS
  (``VmHWM``, reset after compilation via ``/proc/self/clear_refs``) minus
  the RSS right after JAX initialised (so it counts the data, parameters,
  optimizer state, executable and the step's temporaries, not the
  interpreter); ``ru_maxrss`` (which also counts the compiler) is kept too.
  On an accelerator, ``device.memory_stats()["peak_bytes_in_use"]``;
* FLOP/s: analytic matmul FLOPs (multiply-add = 2, elementwise work not
  counted; d = input width, h = Q/K width = d here, N = n keys)::

      fwd  = (L−1)·[2nd(2h + d) + 2nNh + 2nNd] + [2nd·2h + 2nNh]
      step = 3·fwd            (backward = 2 × forward for every matmul)

  and ``fraction_of_peak`` = (step / step_s) / peak, where the peak is the
  FLOP/s of a large ``jnp.dot`` timed in this same run (in its own
  subprocess, before and after the configs; the higher is used).  The
  blockwise path executes more than ``step`` (it recomputes blocks):
  ``executed = (L−1)·[6nd(2h + d) + 2nN(4h + 3d)] + [12ndh + 10nNh]``,
  reported as ``executed_flops``.

Dense configs whose compiled plan exceeds ``--max-ram-gib`` (default: 60% of
available RAM) are reported as ``skipped: needs X GiB`` and never run.
``--memory-cap-gib`` finds, per width and implementation, the largest n
(multiple of ``--cap-granularity``) whose compiled plan (temp + arguments +
outputs − aliased) fits the cap, by doubling then bisection (compile only,
abstract inputs; nothing is run, so this is XLA's plan, not a measured RSS).

Every subprocess runs with XLA's memory-minimising CPU scheduler unless
``--xla-cpu-scheduler concurrency`` (XLA's default; see :mod:`tfjax.runtime`:
on CPU it holds many more buffers alive).  The choice is in the report.

Output: ``benchmark.json`` and ``benchmark.md`` under ``--out``; the table is
printed too.  Works on CPU, GPU and TPU (nothing here assumes a CPU, except
that the RSS figure is only measured where ``/proc`` exists).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from tfjax.runtime import CPU_SCHEDULERS, use_low_memory_cpu_scheduler

GIB = 2.0**30
DEFAULT_SIZES = (512, 2048, 8192, 16384)
DEFAULT_WIDTHS = (512, 128)


# ----------------------------------------------------------------------------
# analytic FLOPs
# ----------------------------------------------------------------------------
def model_flops(n: int, width: int, layers: int, keys: int | None = None,
                qk_width: int | None = None) -> int:
  """Matmul FLOPs of one training step (forward + backward), see module doc."""
  d, h, big_n = width, qk_width or width, keys or n
  fwd = ((layers - 1) * (2 * n * d * (2 * h + d) + 2 * n * big_n * h
                         + 2 * n * big_n * d)
         + 2 * n * d * 2 * h + 2 * n * big_n * h)
  return 3 * fwd


def executed_flops(n: int, width: int, layers: int, implementation: str,
                   keys: int | None = None, qk_width: int | None = None) -> int:
  """Matmul FLOPs actually executed (the blockwise path recomputes blocks)."""
  if implementation == "dense":
    return model_flops(n, width, layers, keys, qk_width)
  d, h, big_n = width, qk_width or width, keys or n
  return ((layers - 1) * (6 * n * d * (2 * h + d)
                          + 2 * n * big_n * (4 * h + 3 * d))
          + 12 * n * d * h + 10 * n * big_n * h)


# ----------------------------------------------------------------------------
# memory helpers (CPU: /proc)
# ----------------------------------------------------------------------------
def _proc_status(field: str):
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith(field + ":"):
          return int(line.split()[1]) * 1024
  except OSError:
    return None
  return None


def _reset_peak_rss() -> bool:
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
    return True
  except OSError:
    return False


def _available_ram() -> float | None:
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
  except OSError:
    return None
  return None


# ----------------------------------------------------------------------------
# workers (run in fresh subprocesses)
# ----------------------------------------------------------------------------
def _init_jax():
  import jax
  import jax.numpy as jnp
  jax.block_until_ready(jnp.zeros(()) + 1)
  return jax, jnp


def _build_step(cfg, abstract=False):
  """Returns (jitted step, example args) for one config.

  ``abstract``: the batch is a ShapeDtypeStruct (enough to compile and plan).
  """
  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax
  from tfjax.models import TransFusionHead

  n, w = cfg["n"], cfg["width"]
  compute_dtype = (None if cfg.get("compute_dtype") in (None, "none")
                   else jnp.dtype(cfg["compute_dtype"]))
  head = TransFusionHead(num_layers=cfg["layers"],
                         implementation=cfg["implementation"],
                         block_size=cfg["block_size"],
                         compute_dtype=compute_dtype)
  params = jax.jit(head.init)(jax.random.key(0), jnp.zeros((8, w)))
  tx = optax.adam(1e-3)
  opt_state = jax.jit(tx.init)(params)

  def step(params, opt_state, x, groups):
    loss, grads = jax.value_and_grad(
        lambda p: head.apply(p, x, groups, method=head.loss))(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  if abstract:
    return jax.jit(step, donate_argnums=(0, 1)), (
        params, opt_state, jax.ShapeDtypeStruct((n, w), jnp.float32),
        jax.ShapeDtypeStruct((n,), jnp.int32))
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((n, w), dtype=np.float32))
  groups = jnp.asarray(rng.permutation(np.arange(n) // 2).astype(np.int32))
  return jax.jit(step, donate_argnums=(0, 1)), (params, opt_state, x, groups)


def _plan_bytes(compiled):
  m = compiled.memory_analysis()
  if m is None:
    return None
  out = {k: int(getattr(m, k + "_size_in_bytes", 0) or 0)
         for k in ("temp", "argument", "output", "alias", "generated_code")}
  out["total"] = out["temp"] + out["argument"] + out["output"] - out["alias"]
  return out


def worker_step(cfg):
  baseline = _proc_status("VmRSS")
  jax, _ = _init_jax()
  baseline = _proc_status("VmRSS") or baseline
  t0 = time.perf_counter()
  step, args = _build_step(cfg)
  compiled = step.lower(*args).compile()
  compile_s = time.perf_counter() - t0
  plan = _plan_bytes(compiled)
  res = {"compile_s": compile_s, "plan_bytes": plan,
         "baseline_rss_bytes": baseline}
  limit = cfg.get("max_bytes")
  if plan is not None and limit and plan["total"] > limit:
    res["skipped"] = (f"needs {plan['total'] / GIB:.1f} GiB (XLA plan) > "
                      f"{limit / GIB:.1f} GiB allowed")
    return res
  device = jax.devices()[0]
  reset = _reset_peak_rss()
  params, opt_state, x, groups = args
  times = []
  warmup = cfg.get("warmup", 1)
  for i in range(cfg["repeats"] + warmup):
    t = time.perf_counter()
    params, opt_state, loss = compiled(params, opt_state, x, groups)
    jax.block_until_ready((params, loss))
    if i >= warmup:                          # the first calls warm up
      times.append(time.perf_counter() - t)
  res.update(step_s=statistics.median(times), step_times_s=times,
             loss=float(loss))
  peak = _proc_status("VmHWM")
  if peak is not None and baseline is not None:
    res["peak_rss_minus_baseline_bytes"] = peak - baseline
    res["peak_rss_reset_after_compile"] = reset
  import resource
  res["ru_maxrss_minus_baseline_bytes"] = (
      resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
      - (baseline or 0))
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

  def total(n):
    return worker_plan(dict(cfg, n=n))["plan_bytes"]["total"]

  n_fit, probes = largest_n_within(cfg["cap_bytes"], total,
                                   cfg["granularity"])
  return {"largest_n": n_fit,
          "probes": {str(k): v for k, v in sorted(probes.items())}}


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
  return {"size": size, "dtype": str(dtype), "seconds": best,
          "flops_per_s": 2 * size**3 / best,
          "device": str(jax.devices()[0]),
          "platform": jax.devices()[0].platform}


WORKERS = {"step": worker_step, "plan": worker_plan, "matmul": worker_matmul,
           "max_n": worker_max_n}


def run_worker(kind: str, cfg: dict, timeout: float,
               cpu_scheduler: str = "memory") -> dict:
  """Runs one worker in a fresh Python process; returns its JSON (or error)."""
  cmd = [sys.executable, "-m", "experiments.benchmark", "--worker", kind,
         json.dumps(cfg)]
  env = dict(os.environ)
  env["TFJAX_XLA_CPU_SCHEDULER"] = cpu_scheduler
  env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  try:
    proc = subprocess.run(cmd, capture_output=True, text=True,
                          timeout=timeout, env=env)
  except subprocess.TimeoutExpired:
    return {"error": f"timed out after {timeout:.0f} s"}
  for line in reversed(proc.stdout.strip().splitlines()):
    if line.startswith("{"):
      return json.loads(line)
  return {"error": f"exit {proc.returncode}: {proc.stderr.strip()[-800:]}"}


# ----------------------------------------------------------------------------
# the driver
# ----------------------------------------------------------------------------
def largest_n_within(cap_bytes, plan_total, granularity, n_max=1 << 20):
  """Largest n (multiple of granularity) with plan_total(n) <= cap_bytes.

  Doubling from ``granularity``, then bisection; returns (n, {n: bytes}).
  """
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
    if fits(mid):
      lo = mid
    else:
      hi = mid
  return lo, cache


def _fmt_gib(b):
  return "—" if b is None else f"{b / GIB:.2f}"


def markdown(report) -> str:
  peak = report["matmul_peak_flops_per_s"]
  lines = [
      "# TransFusion step benchmark: dense vs blockwise", "",
      f"Device: {report['device']}; matmul peak (jnp.dot "
      f"{report['matmul'][0]['size']}², {report['matmul'][0]['dtype']}): "
      f"{peak / 1e9:.1f} GFLOP/s (max of {len(report['matmul'])} "
      f"measurements: "
      + ", ".join(f"{m['flops_per_s'] / 1e9:.1f}" for m in report["matmul"])
      + "). Load average at start/end: "
      f"{report['load_start']} / {report['load_end']}.", "",
      f"L = {report['layers']}, block_size = {report['block_size']}, "
      f"compute dtype = {report['compute_dtype']}, XLA CPU scheduler = "
      f"{report.get('xla_cpu_scheduler', 'memory')}. FLOPs per step = "
      "3·[(L−1)(2nd(2h+d) + 2n²h + 2n²d) + 4ndh + 2n²h] (model FLOPs, h = d).",
      "",
      "| impl | width | n | step s | model GFLOP | GFLOP/s | % of peak | "
      "XLA plan GiB | peak RSS−base GiB | device peak GiB | note |",
      "|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for r in report["results"]:
    note = r.get("skipped") or r.get("error") or ""
    step = r.get("step_s")
    rate = None if step is None else r["model_flops"] / step
    lines.append(
        f"| {r['implementation']} | {r['width']} | {r['n']} | "
        f"{'—' if step is None else f'{step:.3f}'} | "
        f"{r['model_flops'] / 1e9:.1f} | "
        f"{'—' if rate is None else f'{rate / 1e9:.1f}'} | "
        f"{'—' if rate is None else f'{100 * rate / peak:.0f}%'} | "
        f"{_fmt_gib((r.get('plan_bytes') or {}).get('total'))} | "
        f"{_fmt_gib(r.get('peak_rss_minus_baseline_bytes'))} | "
        f"{_fmt_gib(r.get('device_peak_bytes'))} | {note} |")
  if report.get("max_n"):
    lines += ["", f"Largest n whose XLA plan fits {report['memory_cap_gib']} "
              "GiB (compile only, multiple of "
              f"{report['cap_granularity']}):", "",
              "| impl | width | largest n |", "|---|---|---|"]
    for m in report["max_n"]:
      lines.append(f"| {m['implementation']} | {m['width']} | "
                   f"{m.get('largest_n', m.get('error'))} |")
  return "\n".join(lines) + "\n"


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--quick", action="store_true",
                 help="n ∈ {512, 2048}, width 128, 2 repeats: a few minutes")
  p.add_argument("--sizes", type=int, nargs="+", default=None)
  p.add_argument("--widths", type=int, nargs="+", default=None)
  p.add_argument("--implementations", nargs="+",
                 default=["dense", "blockwise"],
                 choices=["dense", "blockwise"])
  p.add_argument("--layers", type=int, default=5)
  p.add_argument("--block-size", type=int, default=512)
  p.add_argument("--compute-dtype", default="none",
                 help="'none' (inputs' dtype) or e.g. bfloat16")
  p.add_argument("--repeats", type=int, default=None)
  p.add_argument("--warmup", type=int, default=1,
                 help="untimed steps before the timed ones (0: time the "
                      "first run of the compiled step)")
  p.add_argument("--matmul-size", type=int, default=None)
  p.add_argument("--memory-cap-gib", type=float, default=2.0,
                 help="find the largest n whose compiled plan fits (0: skip)")
  p.add_argument("--cap-granularity", type=int, default=None)
  p.add_argument("--max-ram-gib", type=float, default=None,
                 help="skip configs whose XLA plan exceeds this (default: "
                      "60%% of available RAM)")
  p.add_argument("--timeout", type=float, default=3600.0,
                 help="seconds per subprocess")
  p.add_argument("--xla-cpu-scheduler", default="memory",
                 choices=list(CPU_SCHEDULERS),
                 help="XLA's CPU scheduler in every subprocess (see "
                      "tfjax.runtime); 'concurrency' is XLA's default")
  p.add_argument("--out", default="results/benchmark/")
  p.add_argument("--worker", nargs=2, metavar=("KIND", "JSON"),
                 help=argparse.SUPPRESS)
  args = p.parse_args(argv)

  if args.worker:
    kind, cfg = args.worker
    use_low_memory_cpu_scheduler(
        os.environ.get("TFJAX_XLA_CPU_SCHEDULER", "memory"))
    print(json.dumps(WORKERS[kind](json.loads(cfg))), flush=True)
    return None

  sizes = args.sizes or ([512, 2048] if args.quick else list(DEFAULT_SIZES))
  widths = args.widths or ([128] if args.quick else list(DEFAULT_WIDTHS))
  repeats = args.repeats or (2 if args.quick else 3)
  avail = _available_ram()
  max_bytes = (args.max_ram_gib * GIB if args.max_ram_gib
               else (0.6 * avail if avail else None))
  matmul_cfg = {"size": args.matmul_size or (2048 if args.quick else 4096),
                "dtype": ("float32" if args.compute_dtype == "none"
                          else args.compute_dtype)}

  def log(msg):
    print(msg, file=sys.stderr, flush=True)

  report = {"layers": args.layers, "block_size": args.block_size,
            "compute_dtype": args.compute_dtype,
            "xla_cpu_scheduler": args.xla_cpu_scheduler,
            "load_start": [round(x, 2) for x in os.getloadavg()],
            "cpu_count": os.cpu_count(), "matmul": [], "results": []}
  log(f"matmul peak ({matmul_cfg}) ...")
  report["matmul"].append(run_worker("matmul", matmul_cfg, args.timeout,
                                        args.xla_cpu_scheduler))
  report["device"] = report["matmul"][0].get("device", "?")
  platform = report["matmul"][0].get("platform", "cpu")
  if platform != "cpu":
    max_bytes = args.max_ram_gib * GIB if args.max_ram_gib else None

  for width in widths:
    for n in sizes:
      for impl in args.implementations:
        cfg = {"n": n, "width": width, "layers": args.layers,
               "implementation": impl, "block_size": args.block_size,
               "compute_dtype": args.compute_dtype, "repeats": repeats,
               "warmup": args.warmup,
               "max_bytes": max_bytes}
        log(f"step {impl} n={n} width={width} ...")
        t = time.time()
        r = run_worker("step", cfg, args.timeout, args.xla_cpu_scheduler)
        r.update(implementation=impl, n=n, width=width,
                 load=[round(x, 2) for x in os.getloadavg()],
                 wall_s=time.time() - t,
                 model_flops=model_flops(n, width, args.layers),
                 executed_flops=executed_flops(n, width, args.layers, impl))
        report["results"].append(r)
        log(json.dumps({k: r.get(k) for k in
                        ("implementation", "n", "width", "step_s",
                         "skipped", "error")}))

  log("matmul peak again ...")
  report["matmul"].append(run_worker("matmul", matmul_cfg, args.timeout,
                                        args.xla_cpu_scheduler))
  peaks = [m["flops_per_s"] for m in report["matmul"] if "flops_per_s" in m]
  report["matmul_peak_flops_per_s"] = max(peaks) if peaks else float("nan")
  for r in report["results"]:
    if r.get("step_s"):
      r["model_flops_per_s"] = r["model_flops"] / r["step_s"]
      r["fraction_of_peak"] = r["model_flops_per_s"] / report[
          "matmul_peak_flops_per_s"]
      r["executed_flops_per_s"] = r["executed_flops"] / r["step_s"]

  if args.memory_cap_gib > 0:
    gran = args.cap_granularity or (1024 if args.quick else 512)
    report.update(memory_cap_gib=args.memory_cap_gib, cap_granularity=gran,
                  max_n=[])
    for width in widths:
      for impl in args.implementations:
        log(f"largest n within {args.memory_cap_gib} GiB: {impl} w={width}")
        cfg = {"width": width, "layers": args.layers, "implementation": impl,
               "block_size": args.block_size,
               "compute_dtype": args.compute_dtype,
               "cap_bytes": args.memory_cap_gib * GIB, "granularity": gran}
        r = run_worker("max_n", cfg, args.timeout, args.xla_cpu_scheduler)
        r.update(implementation=impl, width=width)
        report["max_n"].append(r)
  report["load_end"] = [round(x, 2) for x in os.getloadavg()]

  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, "benchmark.json"), "w") as f:
    json.dump(report, f, indent=1)
  md = markdown(report)
  with open(os.path.join(args.out, "benchmark.md"), "w") as f:
    f.write(md)
  print(md)
  return report


if __name__ == "__main__":
  main()
