"""FLOP counts of the benchmarked head step and the chips' peak FLOP rates (experiments.benchmark).

The formulas count the matmul FLOPs of the TransFusion step that ``experiments.benchmark``
times (tests/test_experiments_benchmark.py checks them against every ``dot_general`` of the
traced step).  :data:`CHIP_PEAKS` holds the vendors' dense (no sparsity) tensor-core peaks.
"""

from __future__ import annotations

import re


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


# Dense tensor-core peaks in TFLOP/s from NVIDIA's datasheets: (pattern matched against
# jax's device_kind, name, float32 as TF32 — XLA's default precision for float32 matmuls
# and convolutions on these GPUs —, bfloat16).  The first pattern that matches is used.
CHIP_PEAKS = (
  (r"H100.*PCIe", "H100 PCIe", 378.0, 756.0),
  (r"H100.*NVL", "H100 NVL", 417.5, 835.0),
  (r"H100", "H100 SXM", 494.7, 989.4),
  (r"H200.*NVL", "H200 NVL", 417.5, 835.0),
  (r"H200", "H200 SXM", 494.7, 989.4),
  (r"A100", "A100", 156.0, 312.0),
)


def chip_peak(device_kind: str, dtype: str) -> float | None:
  """The chip's dense peak in FLOP/s for ``dtype`` ("float32" | "bfloat16"); None when
  the chip is not in :data:`CHIP_PEAKS` (CPUs among them)."""
  for pattern, _, fp32, bf16 in CHIP_PEAKS:
    if re.search(pattern, device_kind, re.IGNORECASE):
      return 1e12 * (bf16 if dtype == "bfloat16" else fp32)
  return None
