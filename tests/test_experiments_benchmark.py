"""experiments/benchmark.py: FLOP formulas, the memory-cap search, a tiny run."""

import json
import os

import jax
import numpy as np
import optax
import pytest

from experiments import benchmark
from tfjax.models import TransFusionHead


def _dot_flops(jaxpr) -> int:
  """Multiply-add FLOPs (×2) of every dot_general, scan bodies × length."""
  total = 0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      (lhs_contract, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval.shape
      k = int(np.prod([lhs[i] for i in lhs_contract]))
      total += 2 * k * int(np.prod(eqn.outvars[0].aval.shape))
    times = eqn.params["length"] if eqn.primitive.name == "scan" else 1
    for p in eqn.params.values():
      for sub in (p if isinstance(p, (tuple, list)) else (p,)):
        if isinstance(sub, jax.extend.core.ClosedJaxpr):
          total += times * _dot_flops(sub.jaxpr)
        elif isinstance(sub, jax.extend.core.Jaxpr):
          total += times * _dot_flops(sub)
  return total


@pytest.mark.parametrize("n,width,layers,block", [(64, 16, 3, 16),
                                                  (48, 8, 2, 16)])
def test_flop_formulas_count_the_traced_matmuls(n, width, layers, block):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(n, width)).astype(np.float32)
  groups = np.arange(n) // 2
  counted = {}
  for impl in ("dense", "blockwise"):
    head = TransFusionHead(num_layers=layers, implementation=impl,
                           block_size=block)
    params = head.init(jax.random.key(0), x[:4])
    tx = optax.adam(1e-3)

    def step(p, o):
      g = jax.grad(lambda p: head.apply(p, x, groups, method=head.loss))(p)
      return tx.update(g, o, p)

    counted[impl] = _dot_flops(
        jax.make_jaxpr(step)(params, tx.init(params)).jaxpr)
  assert counted["dense"] == benchmark.model_flops(n, width, layers)
  assert counted["blockwise"] == benchmark.executed_flops(
      n, width, layers, "blockwise")
  assert counted["blockwise"] > counted["dense"]      # it recomputes blocks


def test_largest_n_within_doubles_then_bisects():
  plan = lambda n: 1000 + 3 * n          # bytes, increasing in n
  n, probes = benchmark.largest_n_within(1000 + 3 * 700, plan, 64)
  assert n == 640                         # largest multiple of 64 ≤ 700
  assert plan(n) <= 1000 + 3 * 700 < plan(n + 64)
  assert len(probes) < 10
  assert benchmark.largest_n_within(10, plan, 64)[0] == 0     # nothing fits
  assert benchmark.largest_n_within(10**9, lambda n: None, 64)[0] is None
  assert benchmark.largest_n_within(10**12, plan, 64, n_max=4096)[0] == 4096


def test_markdown_marks_skipped_and_failed_configs():
  report = {
      "device": "cpu:0", "layers": 2, "block_size": 16,
      "compute_dtype": "none", "xla_cpu_scheduler": "memory",
      "load_start": [0, 0, 0], "load_end": [0, 0, 0],
      "matmul": [{"size": 64, "dtype": "float32", "flops_per_s": 2e9}],
      "matmul_peak_flops_per_s": 2e9,
      "results": [
          {"implementation": "dense", "n": 64, "width": 8, "step_s": 0.5,
           "model_flops": 1e9, "plan_bytes": {"total": 2**30}},
          {"implementation": "dense", "n": 8192, "width": 8,
           "model_flops": 1e12, "skipped": "needs 30 GiB"},
          {"implementation": "blockwise", "n": 8192, "width": 8,
           "model_flops": 1e12, "error": "timed out after 5 s"}]}
  md = benchmark.markdown(report)
  assert "| dense | 8 | 64 | 0.500 | 1.0 | 2.0 | 100% | 1.00 |" in md
  assert "needs 30 GiB" in md and "timed out after 5 s" in md


@pytest.mark.slow
def test_tiny_benchmark_run_writes_json_and_markdown(tmp_path):
  out = str(tmp_path / "bench")
  report = benchmark.main([
      "--sizes", "64", "--widths", "16", "--layers", "2", "--block-size",
      "16", "--repeats", "1", "--matmul-size", "256", "--memory-cap-gib",
      "0.005", "--cap-granularity", "64", "--out", out, "--timeout", "300"])
  with open(os.path.join(out, "benchmark.json")) as f:
    saved = json.load(f)
  assert saved["xla_cpu_scheduler"] == "memory"
  assert [(r["implementation"], r["n"]) for r in saved["results"]] == [
      ("dense", 64), ("blockwise", 64)]
  for r in saved["results"]:
    assert "error" not in r and r["step_s"] > 0, r
    assert r["plan_bytes"]["total"] > 0
    assert 0 < r["fraction_of_peak"] < 5
  assert saved["matmul_peak_flops_per_s"] > 0
  fits = {m["implementation"]: m["largest_n"] for m in saved["max_n"]}
  # Under the same small cap the blockwise plan fits at least as many rows.
  assert fits["blockwise"] >= fits["dense"] >= 64
  with open(os.path.join(out, "benchmark.md")) as f:
    assert "| blockwise | 16 | 64 |" in f.read()
  assert report["results"][0]["n"] == 64
