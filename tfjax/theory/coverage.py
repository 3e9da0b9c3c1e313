"""Positive coverage vs batch size: the minimum-batch-size limit.

Host-side, exact rational arithmetic on Python integers (not jit-able: ``n``
and ``K`` are combinatorial integers, not array values).  A row of the batch
needs at least one positive (another view of its source, or another labelled
sample of its class); these functions give the probability that some row has
none, the expected fraction of such rows, and the smallest batch size from
which that probability stays below a tolerance.  Derivation:
``docs/theory.md`` §1.

* :func:`failure_probability`, :func:`coverage_probability`;
* :func:`expected_uncovered_fraction`;
* :func:`min_batch_size`.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

from tfjax.theory._checks import _check_choice, _check_int, _check_range

__all__ = [
  "coverage_probability",
  "failure_probability",
  "expected_uncovered_fraction",
  "min_batch_size",
]

_MODES = ("supervised", "self_supervised", "semi_supervised")


def _coverage_args(n, num_classes, mode, views, label_fraction):
  n = _check_int("n", n, 1)
  k = _check_int("num_classes", num_classes, 1)
  _check_choice("mode", mode, _MODES)
  views = _check_int("views", views, 1)
  _check_range("label_fraction", label_fraction, 0.0, 1.0, lo_open=True)
  if mode == "supervised":
    lam = Fraction(1)
  elif mode == "semi_supervised":
    lam = Fraction(float(label_fraction))
  else:
    lam = None
  return n, k, views, lam


def _exact_failure(n: int, k: int, lam: Fraction) -> Fraction:
  """P(some class holds exactly one needy sample), exact rational arithmetic.

  Each of the n samples independently is "labelled with class c" with
  probability p = lam/k for each c (else unlabelled). Inclusion–exclusion over
  the events E_c = {class c holds exactly one labelled sample}:
      P(no E_c) = Σ_{j=0}^{min(k,n)} (-1)^j C(k,j) n!/(n-j)! p^j (1 - j p)^(n-j).
  With lam = a/b and p = a/(b k) every term is an integer over (b k)^n.
  """
  a, b = lam.numerator, lam.denominator
  bk = b * k
  total = 0
  falling = 1  # n!/(n-j)!
  binom = 1  # C(k, j)
  for j in range(0, min(k, n) + 1):
    if j > 0:
      falling *= n - j + 1
      binom = binom * (k - j + 1) // j
    rest = bk - j * a
    term = binom * falling * a**j * rest ** (n - j)
    total += -term if j % 2 else term
  return 1 - Fraction(total, bk**n)


def failure_probability(
  n: int, num_classes: int, *, mode: str = "supervised", views: int = 2, label_fraction: float = 1.0
) -> float:
  """Probability that some row of a batch that needs a positive has none.

  Shapes: scalars in, Python ``float`` out. Host-side (exact rational
  arithmetic on Python integers); not jit-able because ``n`` and ``K`` are
  combinatorial integers, not array values.

  Math (docs/theory.md §1): n samples, labels i.i.d. uniform over K classes.

  * ``mode="supervised"``: a row needs another sample of its class, so the batch
    fails iff some class has exactly one member;
    ``1 - Σ_j (-1)^j C(K,j) n^{(j)} K^{-j} (1 - j/K)^{n-j}``
    (``n^{(j)} = n!/(n-j)!``), evaluated exactly (no cancellation error).
  * ``mode="self_supervised"`` with ``views ≥ 2`` views per source: every row
    has its sibling views, so 0 (trivial). With ``views == 1`` every row fails: 1.
  * ``mode="semi_supervised"`` with single views (``views == 1``): each sample is
    labelled with probability ``λ = label_fraction`` (our choice: i.i.d.);
    unlabelled rows never have a positive and are left out of the loss by
    design (:func:`tfjax.affinity.jsd_loss` averages only rows with a
    positive), so failure means some *labelled* row has no other labelled
    sample of its class: the same formula with ``p = λ/K`` per class.
    With ``views ≥ 2``: 0.

  Args:
    n: batch size (number of rows), int ≥ 1.
    num_classes: K, int ≥ 1.
    mode: "supervised", "self_supervised" or "semi_supervised".
    views: views per source (self/semi-supervised modes), int ≥ 1.
    label_fraction: λ in (0, 1] (semi-supervised only).

  Example:
    >>> failure_probability(2, 2)   # two samples, two classes: P(different) = 1/2
    0.5
  """
  n, k, views, lam = _coverage_args(n, num_classes, mode, views, label_fraction)
  if mode == "self_supervised":
    return 0.0 if views >= 2 else 1.0
  if mode == "semi_supervised" and views >= 2:
    return 0.0
  return float(_exact_failure(n, k, lam))


def coverage_probability(
  n: int, num_classes: int, *, mode: str = "supervised", views: int = 2, label_fraction: float = 1.0
) -> float:
  """Probability that every row that needs a positive has at least one.

  ``1 - failure_probability(...)``; see :func:`failure_probability` for the
  modes, shapes and math. K = 1 gives 1 for every n ≥ 2; n = 1 gives 0 in
  supervised mode (a lone sample has no partner).

  Example:
    >>> round(coverage_probability(3, 2), 4)   # all three in one class: 2/8
    0.25
  """
  n, k, views, lam = _coverage_args(n, num_classes, mode, views, label_fraction)
  if mode == "self_supervised":
    return 1.0 if views >= 2 else 0.0
  if mode == "semi_supervised" and views >= 2:
    return 1.0
  return float(1 - _exact_failure(n, k, lam))


def expected_uncovered_fraction(
  n: int, num_classes: int, *, mode: str = "supervised", views: int = 2, label_fraction: float = 1.0
) -> float:
  """Expected fraction of the n rows that have no positive (excluded rows).

  Shapes: scalars in, ``float`` out. Math (docs/theory.md §1.3), by linearity
  of expectation over rows:

  * supervised: ``(1 - 1/K)^(n-1)`` (1 when n = 1);
  * self-supervised: 0 with ``views ≥ 2``, else 1;
  * semi-supervised, single views: ``(1-λ) + λ (1 - λ/K)^(n-1)`` (unlabelled
    rows count as uncovered); with ``views ≥ 2``: 0.

  Example:
    >>> expected_uncovered_fraction(2, 2)
    0.5
  """
  n, k, views, lam = _coverage_args(n, num_classes, mode, views, label_fraction)
  if mode == "self_supervised":
    return 0.0 if views >= 2 else 1.0
  if mode == "semi_supervised" and views >= 2:
    return 0.0
  lam_f = float(lam)
  return (1.0 - lam_f) + lam_f * (1.0 - lam_f / k) ** (n - 1)


def min_batch_size(
  num_classes: int,
  delta: float,
  *,
  mode: str = "supervised",
  views: int = 2,
  label_fraction: float = 1.0,
  n_max: int = 1_000_000,
) -> int:
  """Smallest n such that every batch size ``m ≥ n`` fails with prob. ≤ δ.

  Shapes: scalars in, ``int`` out. Host-side (exact arithmetic).

  Failure is not monotone in n at small n (K = 2: 1/2 at n = 2, 3/4 at n = 3),
  so we define the limit robustly (our choice): the smallest n from which on
  ``failure_probability(m) ≤ δ`` for all ``m ≥ n``. Search (docs/theory.md
  §1.4): the expected number of classes with exactly one needy sample,
  ``B(n) = K n p (1-p)^(n-1)`` (p = λ/K), bounds the failure probability
  (Markov) and decreases for ``n ≥ -1/log(1-p)``; we find the first such n with
  ``B(n) ≤ δ`` and walk down with the exact failure probability until it
  exceeds δ.

  Self-supervised mode with ``views ≥ 2`` (and semi-supervised with
  ``views ≥ 2``) returns 1 (trivial: every row has its sibling views; a single
  source already carries 2 rows). For K = 1 (supervised): 2.

  Args:
    num_classes: K ≥ 1.
    delta: allowed failure probability, in (0, 1).
    mode, views, label_fraction: as in :func:`failure_probability`.
    n_max: give up (ValueError) beyond this batch size.

  Example:
    >>> min_batch_size(10, 0.01)
    88
  """
  _check_int("num_classes", num_classes, 1)
  if isinstance(delta, (bool, np.bool_)):
    raise TypeError("delta must be a float")
  _check_range("delta", delta, 0.0, lo_open=True)
  if not float(delta) < 1.0:
    raise ValueError(f"delta must be in (0, 1), got {delta!r}")
  n_max = _check_int("n_max", n_max, 2)
  _, k, views, lam = _coverage_args(1, num_classes, mode, views, label_fraction)
  if mode == "self_supervised":
    if views < 2:
      raise ValueError("self-supervised mode with views=1 never has positives")
    return 1
  if mode == "semi_supervised" and views >= 2:
    return 1
  delta = float(delta)
  p = float(lam) / k
  if p >= 1.0:  # K = 1, fully labelled: any n >= 2 is covered
    return 2
  n0 = max(2, int(math.ceil(-1.0 / math.log1p(-p))))

  def bound(n):
    return k * n * p * math.exp((n - 1) * math.log1p(-p))

  hi = n0
  while bound(hi) > delta:
    hi *= 2
    if hi > n_max:
      raise ValueError(f"min_batch_size exceeds n_max={n_max}")
  lo = n0  # bound(lo) may exceed delta; bisection on the (decreasing) bound
  while lo < hi:
    mid = (lo + hi) // 2
    if bound(mid) <= delta:
      hi = mid
    else:
      lo = mid + 1
  n = lo  # every m >= n has failure <= bound(m) <= delta
  while n > 1 and float(_exact_failure(n - 1, k, lam)) <= delta:
    n -= 1
  return n
