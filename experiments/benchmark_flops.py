"""FLOP counts of the benchmarked head step (experiments.benchmark).

The formulas count the matmul FLOPs of the TransFusion step that ``experiments.benchmark``
times (tests/test_experiments_benchmark.py checks them against every ``dot_general`` of the
traced step).
"""

from __future__ import annotations


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
