"""Benchmark: dense vs blockwise TransFusion training steps (time, memory, FLOP/s).

    python -m experiments.benchmark --config=experiments/configs/benchmark.py[:quick|bf16|tiny] \
        [--config.sizes=512,2048] [--config.widths=512,128] \
        [--config.head.num_layers=5] [--config.head.block_size=512] \
        [--config.memory_cap_gib=2] [--config.xla_cpu_scheduler=memory|concurrency] \
        [--workdir=workdirs/benchmark/]

Every option is a field of ``experiments/configs/benchmark.py`` (which says
what each size gives).  For every (width w, batch n, implementation) one
fresh subprocess builds the train state of that config
(``tfjax.state.create_train_state``: raw vectors of width w, no backbone, no
projector, a ``TransFusionHead(num_layers=L, implementation=...)``, Adam) and
times the library's one jitted training step, ``tfjax.step.train_step``
(``tfjax.devices.compile_step(1)``), on a batch ``{"x": [n/2, w]}``: two views
(the vector augmentation at strength 0, so the views equal the sources) of
n/2 sources give the head its n rows, paired by source as the JSD target
wants, then forward + backward + the Adam update.  Reported:

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
  reported as ``executed_flops``.  The rest of the step (the views at
  strength 0, the metrics, Adam) has no matmul: the tests count every
  ``dot_general`` of the traced step against these formulas.

Dense configs whose compiled plan exceeds ``max_ram_gib`` (0: 60% of
available RAM) are reported as ``skipped: needs X GiB`` and never run.
``memory_cap_gib`` finds, per width and implementation, the largest n
(multiple of ``cap_granularity``) whose compiled plan (temp + arguments +
outputs − aliased) fits the cap, by doubling then bisection (compile only,
abstract batch; nothing is run, so this is XLA's plan, not a measured RSS).

Every subprocess runs with XLA's memory-minimising CPU scheduler unless
``xla_cpu_scheduler="concurrency"`` (XLA's default; see :mod:`tfjax.runtime`:
on CPU it holds many more buffers alive); it is set in the subprocess before
JAX starts.  The choice is in the report.

Output: ``benchmark.json`` and ``benchmark.md`` in the work directory; the
table is printed too.  Nothing resumes: every call measures afresh and
replaces them.  Works on CPU, GPU and TPU (nothing here assumes a CPU,
except that the RSS figure is only measured where ``/proc`` exists).
"""

from __future__ import annotations

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
  return (f"tfjax.step.train_step (jitted, state donated): backbone "
          f"{config.backbone!r}, embed_dim {config.embed_dim} (0: no "
          f"projector), TransFusion head with the {config.loss} loss over "
          f"{config.num_views} views (augmentation "
          f"{config.augment or 'default'!r} at strength "
          f"{config.augment_strength}) of n/{config.num_views} sources, "
          f"{config.optimizer} (weight decay {config.weight_decay}, "
          f"{config.schedule} learning rate {config.learning_rate})")


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
def _proc_bytes(field: str, path: str = "/proc/self/status"):
  """A ``FIELD: N kB`` line of ``path`` in bytes (None without ``/proc``)."""
  try:
    with open(path) as f:
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


# ----------------------------------------------------------------------------
# workers (run in fresh subprocesses)
# ----------------------------------------------------------------------------
def _init_jax():
  """Starts JAX and imports the library's training modules.

  Done before the RSS baseline is read, so that the measured peak counts the
  step's buffers and executable, not the imported modules.
  """
  import jax
  import jax.numpy as jnp
  import tfjax.state  # noqa: F401
  import tfjax.devices  # noqa: F401
  jax.block_until_ready(jnp.zeros(()) + 1)
  return jax, jnp


def step_config(cfg):
  """The training config of one benchmark config (a locked ``base_config``).

  ``cfg["config"]`` holds the base fields of the benchmark's config (the
  step: identity backbone, no projector, JSD, Adam, ...); ``cfg`` sets the
  head's implementation.
  """
  from tfjax.config import base_config, validate

  config = base_config()
  config.update(cfg["config"])
  config.head.implementation = cfg["implementation"]
  validate(config, num_devices=1)
  return config


def _build_step(cfg, abstract=False):
  """Returns (jitted train step, (state, batch, key)) for one config.

  The step is the library's (``tfjax.devices.compile_step(1)``: jitted
  ``tfjax.step.train_step``, the state donated); the batch is
  ``{"x": [n/V, width]}`` (V = num_views = 2 views per source: n rows for
  the head).
  ``abstract``: the batch is a ShapeDtypeStruct (enough to compile and plan).
  """
  import jax
  import jax.numpy as jnp
  import numpy as np
  from tfjax.state import create_train_state
  from tfjax.devices import compile_step

  n, w = cfg["n"], cfg["width"]
  config = step_config(cfg)
  views = config.num_views
  if n % views:
    raise ValueError(f"n must be a multiple of num_views = {views} (views of "
                     f"n/{views} sources), got {n}")
  state = create_train_state(config, jax.random.key(0), x_shape=(w,),
                             num_classes=2, data_kind="vector")
  key = jax.random.key(1)
  if abstract:
    batch = {"x": jax.ShapeDtypeStruct((n // views, w), jnp.float32)}
  else:
    rng = np.random.default_rng(0)
    batch = {"x": jnp.asarray(rng.standard_normal((n // views, w),
                                                  dtype=np.float32))}
  return compile_step(1), (state, batch, key)


def _plan_bytes(compiled):
  m = compiled.memory_analysis()
  if m is None:
    return None
  out = {k: int(getattr(m, k + "_size_in_bytes", 0) or 0)
         for k in ("temp", "argument", "output", "alias", "generated_code")}
  out["total"] = out["temp"] + out["argument"] + out["output"] - out["alias"]
  return out


def worker_step(cfg):
  baseline = _proc_bytes("VmRSS")
  jax, _ = _init_jax()
  baseline = _proc_bytes("VmRSS") or baseline
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
  state, batch, key = args
  times = []
  warmup = cfg.get("warmup", 1)
  for i in range(cfg["repeats"] + warmup):
    t = time.perf_counter()
    state, metrics = compiled(state, batch, key)
    jax.block_until_ready((state, metrics))
    if i >= warmup:                          # the first calls warm up
      times.append(time.perf_counter() - t)
  res.update(step_s=statistics.median(times), step_times_s=times,
             loss=float(metrics["loss"]))
  peak = _proc_bytes("VmHWM")
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


def _csv(value, cast=str):
  return [cast(v) for v in str(value).replace(" ", "").split(",") if v]


def check(config):
  """``(sizes, widths, implementations)`` of ``config``, checked before any
  subprocess starts."""
  if config.xla_cpu_scheduler not in CPU_SCHEDULERS:
    raise ValueError(f"unknown xla_cpu_scheduler {config.xla_cpu_scheduler!r}"
                     f"; choose one of {CPU_SCHEDULERS}")
  sizes, widths = _csv(config.sizes, int), _csv(config.widths, int)
  implementations = _csv(config.implementations)
  for impl in implementations:
    if impl not in ("dense", "blockwise"):
      raise ValueError(f"unknown implementation {impl!r} in "
                       f"{config.implementations!r}")
  v = config.num_views
  odd = [n for n in sizes + [config.cap_granularity] if n % v]
  if odd:
    raise ValueError(f"sizes and cap_granularity must be multiples of "
                     f"num_views = {v} (views of n/{v} sources), got {odd}")
  return sizes, widths, implementations


def run(config, workdir: str, progress: bool = True,
        command: str | None = None):
  """Runs the benchmark of ``config`` (experiments/configs/benchmark.py).

  Writes ``benchmark.json`` and ``benchmark.md`` to ``workdir``; returns the
  report (a dict).  ``progress``: one line per subprocess on stderr;
  ``command``: the command line, written at the top of the table.
  """
  sizes, widths, implementations = check(config)
  from tfjax.config import base_config
  train_fields = {k: v for k, v in json.loads(config.to_json()).items()
                  if k in base_config()}
  layers, compute_dtype = config.head.num_layers, config.head.compute_dtype or "none"

  def worker(kind, cfg):
    return run_worker(kind, cfg, float(config.timeout), config.xla_cpu_scheduler)

  def log(msg):
    if progress:
      print(msg, file=sys.stderr, flush=True)

  def load():
    return [round(x, 2) for x in os.getloadavg()]

  report = {"layers": layers, "block_size": config.head.block_size,
            "compute_dtype": compute_dtype, "xla_cpu_scheduler": config.xla_cpu_scheduler,
            "command": command, "step": step_description(config), "load_start": load(),
            "cpu_count": os.cpu_count(), "matmul": [], "results": [],
            "config": json.loads(config.to_json())}
  matmul_cfg = {"size": config.matmul_size,
                "dtype": "float32" if compute_dtype == "none" else compute_dtype}
  log(f"matmul peak ({matmul_cfg}) ...")
  report["matmul"].append(worker("matmul", matmul_cfg))
  report["device"] = report["matmul"][0].get("device", "?")
  avail = _proc_bytes("MemAvailable", "/proc/meminfo")
  max_bytes = (config.max_ram_gib * GIB if config.max_ram_gib else
               0.6 * avail if avail and report["matmul"][0].get("platform", "cpu") == "cpu"
               else None)
  for width in widths:
    for n in sizes:
      for impl in implementations:
        log(f"step {impl} n={n} width={width} ...")
        t = time.time()
        r = worker("step", {"config": train_fields, "n": n, "width": width,
                            "implementation": impl, "repeats": config.repeats,
                            "warmup": config.warmup, "max_bytes": max_bytes})
        r.update(implementation=impl, n=n, width=width, load=load(),
                 wall_s=time.time() - t, model_flops=model_flops(n, width, layers),
                 executed_flops=executed_flops(n, width, layers, impl))
        report["results"].append(r)
        log(json.dumps({k: r.get(k) for k in ("implementation", "n", "width", "step_s",
                                              "skipped", "error")}))
  log("matmul peak again ...")
  report["matmul"].append(worker("matmul", matmul_cfg))
  peaks = [m["flops_per_s"] for m in report["matmul"] if "flops_per_s" in m]
  report["matmul_peak_flops_per_s"] = peak = max(peaks) if peaks else float("nan")
  for r in report["results"]:
    if r.get("step_s"):
      r["model_flops_per_s"] = r["model_flops"] / r["step_s"]
      r["fraction_of_peak"] = r["model_flops_per_s"] / peak
      r["executed_flops_per_s"] = r["executed_flops"] / r["step_s"]
  if config.memory_cap_gib > 0:
    report.update(memory_cap_gib=config.memory_cap_gib,
                  cap_granularity=config.cap_granularity, max_n=[])
    for width in widths:
      for impl in implementations:
        log(f"largest n within {config.memory_cap_gib} GiB: {impl} w={width}")
        r = worker("max_n", {"config": train_fields, "width": width, "implementation": impl,
                             "cap_bytes": config.memory_cap_gib * GIB,
                             "granularity": config.cap_granularity})
        report["max_n"].append({**r, "implementation": impl, "width": width})
  report["load_end"] = load()
  md = markdown(report)
  write_report(workdir, md, report, name="benchmark")
  print(md)
  return report


def main(argv=None):
  argv = list(sys.argv[1:] if argv is None else argv)
  if argv[:1] == ["--worker"]:               # a subprocess of run_worker
    kind, cfg = argv[1], argv[2]
    # Before JAX starts: XLA reads its flags once per process.
    use_low_memory_cpu_scheduler(
        os.environ.get("TFJAX_XLA_CPU_SCHEDULER", "memory"))
    print(json.dumps(WORKERS[kind](json.loads(cfg))), flush=True)
    return None
  from experiments.common import cli
  command = " ".join(["python -m experiments.benchmark"] + argv)
  return cli(lambda config, workdir, progress=True: run(
      config, workdir, progress, command=command), "benchmark", argv, __doc__)


if __name__ == "__main__":
  main()
