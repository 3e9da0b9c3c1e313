"""experiments/benchmark.py (its workers, FLOP formulas and accelerator check) and
benchmark_input.py: FLOP formulas against the library's traced training step, the
memory-cap search, tiny runs."""

import json
import os

import jax
import numpy as np
import pytest

from experiments import (
  benchmark,
  benchmark_flops,
  benchmark_gpu,
  benchmark_input,
  benchmark_workers,
)
from experiments.configs.benchmark import get_config
from experiments.configs.benchmark_input import get_config as input_config
from tfjax.config import base_config
from tfjax.step import train_step


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
      for sub in p if isinstance(p, (tuple, list)) else (p,):
        if isinstance(sub, jax.extend.core.ClosedJaxpr):
          total += times * _dot_flops(sub.jaxpr)
        elif isinstance(sub, jax.extend.core.Jaxpr):
          total += times * _dot_flops(sub)
  return total


def _worker_cfg(n, width, layers, block, impl, **extra):
  config = get_config("tiny")
  config.head.num_layers, config.head.block_size = layers, block
  fields = {k: v for k, v in json.loads(config.to_json()).items() if k in base_config()}
  return dict({"config": fields, "n": n, "width": width, "implementation": impl}, **extra)


@pytest.mark.parametrize("n,width,layers,block", [(64, 16, 3, 16), (48, 8, 2, 16)])
def test_flop_formulas_count_the_traced_matmuls(n, width, layers, block):
  # The whole training step the benchmark times (views at strength 0, the
  # head's JSD loss and its gradient, the metrics, Adam): every matmul in
  # it is the head's, so the formulas count all of them.
  counted = {}
  for impl in ("dense", "blockwise"):
    _, (state, batch, key) = benchmark_workers._build_step(
      _worker_cfg(n, width, layers, block, impl), abstract=True
    )
    assert batch["x"].shape == (n // 2, width)  # 2 views: n head rows
    counted[impl] = _dot_flops(jax.make_jaxpr(train_step)(state, batch, key).jaxpr)
  assert counted["dense"] == benchmark_flops.model_flops(n, width, layers)
  assert counted["blockwise"] == benchmark_flops.executed_flops(n, width, layers, "blockwise")
  assert counted["blockwise"] > counted["dense"]  # it recomputes blocks


def test_step_config_is_the_library_step_without_backbone_or_projector():
  config = benchmark_workers.step_config(_worker_cfg(64, 16, 2, 16, "blockwise"))
  assert (config.backbone, config.embed_dim, config.loss) == ("identity", 0, "jsd")
  assert (config.num_views, config.augment_strength) == (2, 0.0)
  assert (config.optimizer, config.weight_decay, config.schedule) == ("adamw", 0.0, "constant")
  assert config.head.implementation == "blockwise"
  _, (state, _, _) = benchmark_workers._build_step(
    _worker_cfg(64, 16, 2, 16, "dense"), abstract=True
  )
  assert set(state.params) == {"head"}  # nothing but the head
  with pytest.raises(ValueError, match="multiple of num_views"):
    benchmark_workers._build_step(_worker_cfg(63, 16, 2, 16, "dense"))


def test_worker_step_dense_and_blockwise_agree():
  losses = {}
  for impl in ("dense", "blockwise"):
    r = benchmark_workers.worker_step(_worker_cfg(64, 16, 2, 16, impl, repeats=2, warmup=1))
    assert r["step_s"] > 0 and len(r["step_times_s"]) == 2
    assert r["plan_bytes"]["total"] > 0
    losses[impl] = r["loss"]
  assert np.isfinite(losses["dense"])
  np.testing.assert_allclose(losses["blockwise"], losses["dense"], rtol=1e-5)


def test_configs_reject_unknown_args():
  for arg in ("", "quick", "bf16", "tiny"):
    assert get_config(arg).sizes
  for arg in ("", "quick", "tiny"):
    assert input_config(arg).datasets
  with pytest.raises(ValueError):
    get_config("huge")
  with pytest.raises(ValueError):
    input_config("huge")


def test_largest_n_within_doubles_then_bisects():
  plan = lambda n: 1000 + 3 * n  # bytes, increasing in n
  n, probes = benchmark_workers.largest_n_within(1000 + 3 * 700, plan, 64)
  assert n == 640  # largest multiple of 64 ≤ 700
  assert plan(n) <= 1000 + 3 * 700 < plan(n + 64)
  assert len(probes) < 10
  assert benchmark_workers.largest_n_within(10, plan, 64)[0] == 0  # nothing fits
  assert benchmark_workers.largest_n_within(10**9, lambda n: None, 64)[0] is None
  assert benchmark_workers.largest_n_within(10**12, plan, 64, n_max=4096)[0] == 4096


def test_markdown_marks_skipped_and_failed_configs():
  report = {
    "device": "cpu:0",
    "layers": 2,
    "block_size": 16,
    "compute_dtype": "none",
    "xla_cpu_scheduler": "memory",
    "load_start": [0, 0, 0],
    "load_end": [0, 0, 0],
    "matmul": [{"size": 64, "dtype": "float32", "flops_per_s": 2e9}],
    "matmul_peak_flops_per_s": 2e9,
    "results": [
      {
        "implementation": "dense",
        "n": 64,
        "width": 8,
        "step_s": 0.5,
        "model_flops": 1e9,
        "plan_bytes": {"total": 2**30},
      },
      {
        "implementation": "dense",
        "n": 8192,
        "width": 8,
        "model_flops": 1e12,
        "skipped": "needs 30 GiB",
      },
      {
        "implementation": "blockwise",
        "n": 8192,
        "width": 8,
        "model_flops": 1e12,
        "error": "timed out after 5 s",
      },
    ],
  }
  md = benchmark.markdown(report)
  assert "| dense | 8 | 64 | 0.500 | 1.0 | 2.0 | 100% | 1.00 |" in md
  assert "needs 30 GiB" in md and "timed out after 5 s" in md


@pytest.mark.slow
def test_tiny_benchmark_run_writes_json_and_markdown(tmp_path):
  out = str(tmp_path / "bench")
  report = benchmark.run(get_config("tiny"), out, progress=False)
  with open(os.path.join(out, "benchmark.json")) as f:
    saved = json.load(f)
  assert saved["xla_cpu_scheduler"] == "memory"
  assert [(r["implementation"], r["n"]) for r in saved["results"]] == [
    ("dense", 64),
    ("blockwise", 64),
  ]
  for r in saved["results"]:
    assert "error" not in r and r["step_s"] > 0, r
    assert r["plan_bytes"]["total"] > 0
    assert 0 < r["fraction_of_peak"] < 5
    assert np.isfinite(r["loss"])
  assert saved["matmul_peak_flops_per_s"] > 0
  fits = {m["implementation"]: m["largest_n"] for m in saved["max_n"]}
  # Under the same small cap the blockwise plan fits at least as many rows.
  assert fits["blockwise"] >= fits["dense"] >= 64
  with open(os.path.join(out, "benchmark.md")) as f:
    md = f.read()
  assert "| blockwise | 16 | 64 |" in md and "train_step" in md
  assert report["results"][0]["n"] == 64


def test_tiny_input_benchmark_measures_every_path(tmp_path):
  rows = benchmark_input.run(input_config("tiny"), str(tmp_path), progress=False)
  assert [r["dataset"] for r in rows] == ["subspaces_tiny"]
  for col in ("make_dataset", "train_batches", "+ device_prefetch", "+ views"):
    assert rows[0][col] > 0, col
  assert os.path.exists(tmp_path / "results.md")
  with open(tmp_path / "results.json") as f:
    assert json.load(f)[0]["batch"] == 32


@pytest.mark.slow
def test_gpu_check_tiny_measures_every_row(tmp_path):
  # The accelerator check end to end at CPU sizes, in this process: every row
  # (main job, blockwise head, 3 methods x 2 batches on the image backbone; each
  # in float32 and bfloat16) compiled and timed, and nothing written into docs/.
  docs = os.path.join(os.path.dirname(__file__), "..", "docs", "benchmark")
  before = set(os.listdir(docs))
  config = get_config("gpu_tiny")
  report = benchmark.run(config, str(tmp_path), progress=False, command="tiny")
  rows = report["rows"]
  expected = (
    [("main job", "transfusion", 16, d) for d in ("float32", "bfloat16")]
    + [("blockwise head", "transfusion", 256, d) for d in ("float32", "bfloat16")]
    + [
      ("small_cnn", m, n, d)  # ResNet-18's stand-in at CPU sizes
      for n in (8,)
      for d in ("float32", "bfloat16")
      for m in ("simclr", "supcon", "transfusion")
    ]
  )
  assert [(r["what"].split(" (")[0], r["method"], r["n"], r["dtype"]) for r in rows] == expected
  for r in rows:
    assert "error" not in r, r
    for key in ("compile_s", "step_s", "flops_per_s"):
      assert np.isfinite(r[key]) and r[key] > 0, (key, r)
    assert r["fraction_of_peak"] is None  # no peak known for a CPU
  assert report["device_kind"] == "cpu" and set(os.listdir(docs)) == before
  with open(tmp_path / "gpu_cpu.md") as f:
    md = f.read()
  table = [line for line in md.splitlines() if line.startswith("| ") and "---" not in line]
  assert len(table) == 1 + len(expected)
  assert all(line.count(" n/a ") == 2 for line in table[1:])  # % of peak, peak GiB
  assert "Command: `tiny`" in md and "JAX " in md
  with open(tmp_path / "gpu_cpu.json") as f:
    assert len(json.load(f)["rows"]) == len(expected)


def test_gpu_config_has_every_row_at_full_size_and_chip_peaks():
  rows = benchmark_gpu.rows(get_config("gpu"))
  assert [(r["what"].split(" (")[0], r["n"]) for r in rows[:4]] == [
    ("main job", 128),
    ("main job", 128),
    ("blockwise head", 65536),
    ("blockwise head", 65536),
  ]
  image = rows[4:]
  assert {(r["method"], r["n"], r["dtype"]) for r in image} == {
    (m, n, d)
    for m in ("simclr", "supcon", "transfusion")
    for n in (512, 2048)
    for d in ("float32", "bfloat16")
  }
  for r in rows:  # every training config is sound (no compile)
    config = benchmark_workers.step_config(r["cfg"])
    assert config.compute_dtype == r["dtype"] or config.head.compute_dtype == r["dtype"]
  assert image[0]["what"] == "ResNet-18 (32×32 images)"
  assert image[0]["cfg"]["config"]["backbone_kwargs"] == {"width": 1.0}
  assert benchmark_workers.step_config(rows[2]["cfg"]).head.implementation == "blockwise"
  peak = benchmark_flops.chip_peak
  assert peak("NVIDIA H100 80GB HBM3", "bfloat16") == 989.4e12
  assert peak("NVIDIA H100 PCIe", "float32") == 378e12
  assert peak("NVIDIA H200", "float32") == 494.7e12
  assert peak("cpu", "bfloat16") is None
