"""The measurements of experiments.benchmark, each run in a fresh process (``run_worker``).

A worker builds one training step, compiles it once (the compile time is reported apart) and
times it; a fresh process gives each step its own peak memory (CPU: ``VmHWM`` reset after
compilation minus the RSS after JAX started; accelerators: ``peak_bytes_in_use``).  Kinds:
``step`` (compile and time one step), ``plan`` (XLA's planned bytes, compile only), ``max_n``
(the largest n whose plan fits a cap) and ``matmul`` (a large ``jnp.dot``'s FLOP/s).

A step config (``cfg``) is ``{"config": training fields, ...}`` with either ``n``, ``width``
and ``implementation`` (raw vectors of width ``width`` straight into the TransFusion head: the
batch ``{"x": [n/V, width]}``, V views) or ``x_shape``, ``data_kind`` and ``num_classes``
(the config's network on a batch of ``batch_size`` random inputs in [0, 1), or the first
examples of the config's dataset when ``data`` is set; labels where the config has a
``label_fraction``).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

GIB = 2.0**30


def proc_bytes(field: str, path: str = "/proc/self/status"):
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
  """The training config (a locked ``base_config``) of ``cfg["config"]``'s base fields, with
  the head's implementation ``cfg["implementation"]`` when given."""
  from tfjax.config import base_config, validate

  config, fields = base_config(), dict(cfg["config"])
  kwargs = fields.pop("backbone_kwargs", None)  # a backbone's own: assigned, not updated
  config.update(fields)
  if kwargs:
    config.backbone_kwargs = kwargs
  if "implementation" in cfg:
    config.head.implementation = cfg["implementation"]
  validate(config, num_devices=1, check_data="x_shape" not in cfg)
  return config


def _inputs(cfg, config, abstract: bool):
  """The batch of a network step config (``x_shape``): random or the dataset's first."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  n, shape = config.batch_size, (config.batch_size, *cfg["x_shape"])
  if abstract:
    x, y = jax.ShapeDtypeStruct(shape, jnp.float32), jax.ShapeDtypeStruct((n,), jnp.int32)
  elif cfg.get("data"):
    from tfjax.data.pipeline import load_arrays

    x, y = load_arrays(config.dataset, "train", config.data_dir, download=True, take=n)
  else:
    rng = np.random.default_rng(0)
    x = rng.random(shape, dtype=np.float32)
    y = rng.integers(0, cfg["num_classes"], n).astype(np.int32)
  batch = {"x": x} if config.label_fraction is None else {"x": x, "semi_label": y}
  return jax.tree.map(lambda a: a if abstract else jnp.asarray(a), batch)


def _build_step(cfg, abstract=False):
  """(``tfjax.devices.compile_step(1)``, (state, batch, key)) for one config; the batch is
  ``{"x": [n/V, width]}`` (V views: n rows for the head) or the network's (``x_shape``), of
  ShapeDtypeStructs if ``abstract`` (enough to compile and plan)."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from tfjax.state import create_train_state
  from tfjax.devices import compile_step

  config = step_config(cfg)
  if "x_shape" in cfg:
    state = create_train_state(
      config,
      jax.random.key(0),
      x_shape=tuple(cfg["x_shape"]),
      num_classes=cfg["num_classes"],
      data_kind=cfg["data_kind"],
    )
    return compile_step(1), (state, _inputs(cfg, config, abstract), jax.random.key(1))
  n, w = cfg["n"], cfg["width"]
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


def _xla_flops(compiled):
  """FLOPs of one call by XLA's cost analysis (None where it gives none)."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) and cost else cost
  flops = (cost or {}).get("flops")
  return float(flops) if flops and flops > 0 else None


def worker_step(cfg):
  """Compiles and times one config's step; its plan, measured peaks and loss (and XLA's
  FLOP count and the device kind with ``cfg["describe"]``)."""
  import resource

  baseline = proc_bytes("VmRSS")
  jax, _ = _init_jax()
  baseline = proc_bytes("VmRSS") or baseline
  t0 = time.perf_counter()
  step, (state, batch, key) = _build_step(cfg)
  compiled = step.lower(state, batch, key).compile()
  compile_s = time.perf_counter() - t0
  plan = _plan_bytes(compiled)
  res = {"compile_s": compile_s, "plan_bytes": plan, "baseline_rss_bytes": baseline}
  if cfg.get("describe"):
    res.update(xla_flops=_xla_flops(compiled), device_kind=jax.devices()[0].device_kind)
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
  peak = proc_bytes("VmHWM")
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
  cmd = [sys.executable, "-m", "experiments.benchmark_workers", kind, json.dumps(cfg)]
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


if __name__ == "__main__":  # a subprocess of run_worker: KIND JSON
  from tfjax.runtime import use_low_memory_cpu_scheduler

  # Before JAX starts: XLA reads its flags once per process.
  use_low_memory_cpu_scheduler(os.environ.get("TFJAX_XLA_CPU_SCHEDULER", "memory"))
  print(json.dumps(WORKERS[sys.argv[1]](json.loads(sys.argv[2]))), flush=True)
