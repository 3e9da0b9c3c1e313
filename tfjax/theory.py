"""Closed-form predictions for TransFusion's two limits (batch size, augmentation).

**This is our derivation under the model below, not the paper's.** The
TransFusion paper states limits on the maximum augmentation level and the
minimum batch size, but its formulas were not available to this project; the
model, the formulas and their approximations are ours. The step-by-step
derivation is in ``docs/theory.md``; ``tests/test_theory.py`` checks every
formula against a seeded Monte-Carlo simulation.

Model (ours, SPEC §4):

* ``K`` balanced classes; unit class centres ``μ_k ∈ R^d`` with
  ``μ_j·μ_k = ρ`` for ``j ≠ k`` exactly (an equicorrelated set, which exists for
  ``-1/(K-1) ≤ ρ ≤ 1``).
* A source sample ``x = μ_y + σ u`` with ``u ~ N(0, I/d)`` (so ``E‖u‖² = 1``).
* An augmented view ``v = x + s u'`` with fresh ``u' ~ N(0, I/d)``. Every row of a
  batch is such a view (both views of a positive pair are augmented).
* Rows are compared by cosine similarity, then ReLU, zero diagonal, row
  normalisation (SPEC §1).

Three groups of functions:

1. Positive coverage vs batch size (exact, host-side Python/NumPy on
   integers): :func:`coverage_probability`, :func:`failure_probability`,
   :func:`expected_uncovered_fraction`, :func:`min_batch_size`.
2. Cosine statistics (jit-able ``jnp``, broadcasting over array arguments):
   :func:`expected_cosine`, :func:`cosine_std`, :func:`margin_mean`,
   :func:`margin_std`, :func:`win_probability`, :func:`max_augmentation`,
   :func:`max_augmentation_asymptotic`.
3. Noise after one ReLU-fusion layer (jit-able ``jnp``):
   :func:`fused_noise_rms`, :func:`relu_attention_stats`.
"""

from __future__ import annotations

import functools
import math
from fractions import Fraction
from typing import Tuple

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

__all__ = [
    "coverage_probability", "failure_probability", "expected_uncovered_fraction",
    "min_batch_size", "expected_cosine", "cosine_std", "margin_mean",
    "margin_std", "win_probability", "max_augmentation",
    "max_augmentation_asymptotic", "fused_noise_rms", "relu_attention_stats",
]

_MODES = ("supervised", "self_supervised", "semi_supervised")
_PAIRS = ("positive", "same_class", "other_class")
_VERSUS = ("same_class", "other_class")


# ----------------------------------------------------------------------------
# input checks (run only on concrete values, so every jnp function stays jit-able)
# ----------------------------------------------------------------------------

def _concrete(x):
  """``np.ndarray`` of ``x`` or ``None`` when ``x`` is a tracer (under jit)."""
  try:
    return np.asarray(x, dtype=np.float64)
  except (jax.errors.TracerArrayConversionError,
          jax.errors.ConcretizationTypeError):
    return None
  except (TypeError, ValueError) as e:
    raise TypeError(f"expected a real number or array, got {type(x).__name__}") from e


def _check_range(name: str, x, lo=None, hi=None, *, lo_open=False,
                 allow_inf=False) -> None:
  v = _concrete(x)
  if v is None:
    return
  if np.any(np.isnan(v)):
    raise ValueError(f"{name} must not be NaN, got {x!r}")
  if not allow_inf and np.any(np.isinf(v)):
    raise ValueError(f"{name} must be finite, got {x!r}")
  if lo is not None:
    bad = (v <= lo) if lo_open else (v < lo)
    if np.any(bad):
      op = ">" if lo_open else ">="
      raise ValueError(f"{name} must be {op} {lo}, got {x!r}")
  if hi is not None and np.any(v > hi):
    raise ValueError(f"{name} must be <= {hi}, got {x!r}")


def _check_int(name: str, x, lo: int) -> int:
  if isinstance(x, (bool, np.bool_)) or not isinstance(x, (int, np.integer)):
    raise TypeError(f"{name} must be an int, got {type(x).__name__} {x!r}")
  if x < lo:
    raise ValueError(f"{name} must be >= {lo}, got {x}")
  return int(x)


def _check_choice(name: str, x, choices) -> None:
  if x not in choices:
    raise ValueError(f"{name} must be one of {choices}, got {x!r}")


# ----------------------------------------------------------------------------
# 1. Positive coverage vs batch size
# ----------------------------------------------------------------------------

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
  binom = 1    # C(k, j)
  for j in range(0, min(k, n) + 1):
    if j > 0:
      falling *= n - j + 1
      binom = binom * (k - j + 1) // j
    rest = bk - j * a
    term = binom * falling * a ** j * rest ** (n - j)
    total += -term if j % 2 else term
  return 1 - Fraction(total, bk ** n)


def failure_probability(n: int, num_classes: int, *, mode: str = "supervised",
                        views: int = 2, label_fraction: float = 1.0) -> float:
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
    unlabelled rows never have a positive and are excluded from the loss by
    design (SPEC §2), so failure means some *labelled* row has no other labelled
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


def coverage_probability(n: int, num_classes: int, *, mode: str = "supervised",
                         views: int = 2, label_fraction: float = 1.0) -> float:
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


def expected_uncovered_fraction(n: int, num_classes: int, *,
                                mode: str = "supervised", views: int = 2,
                                label_fraction: float = 1.0) -> float:
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


def min_batch_size(num_classes: int, delta: float, *, mode: str = "supervised",
                   views: int = 2, label_fraction: float = 1.0,
                   n_max: int = 1_000_000) -> int:
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


# ----------------------------------------------------------------------------
# 2. Cosine statistics (delta method on Gaussian bilinear forms)
# ----------------------------------------------------------------------------

def _prep(sigma, s, rho, d):
  _check_range("sigma", sigma, 0.0)
  _check_range("s", s, 0.0)
  _check_range("rho", rho, -1.0, 1.0)
  _check_range("d", d, 0.0, lo_open=True, allow_inf=True)
  sigma, s, rho, d = (jnp.asarray(x, dtype=jnp.result_type(float))
                      for x in (sigma, s, rho, d))
  return jnp.broadcast_arrays(sigma, s, rho, d)


def _triplet_moments(sigma, s, c, d):
  """Moments for views (a, b, e) = (0, 1, 2): a, b share a source, e is another
  source whose class centre has cosine c with a's. Returns ``(g, cov)``:
  ``g[(j, k)] = E[v_j·v_k]`` and ``cov((j, k), (l, m)) = Cov[P_jk, P_lm]``, all
  elementwise arrays of the broadcast shape.

  Per coordinate the noises (g_a, g_b, g_e) are Gaussian with covariance S/d,
  S = [[α, γ, 0], [γ, α, 0], [0, 0, α]], α = σ²+s², γ = σ²; centres have Gram
  M = [[1, 1, c], [1, 1, c], [c, c, 1]]. For P_jk = v_j·v_k (Isserlis):
  Cov(P_jk, P_lm) = [M_jl S_km + M_jm S_kl + M_kl S_jm + M_km S_jl
                     + S_jl S_km + S_jm S_kl] / d.
  """
  alpha = sigma ** 2 + s ** 2
  gamma = sigma ** 2
  one, zero = jnp.ones_like(c), jnp.zeros_like(c)
  m = ((one, one, c), (one, one, c), (c, c, one))
  sm = ((alpha, gamma, zero), (gamma, alpha, zero), (zero, zero, alpha))
  g = {(j, k): m[j][k] + sm[j][k] for j in range(3) for k in range(3)}

  def cov(x, y):
    (j, k), (l, mm) = x, y
    return (m[j][l] * sm[k][mm] + m[j][mm] * sm[k][l] + m[k][l] * sm[j][mm]
            + m[k][mm] * sm[j][l] + sm[j][l] * sm[k][mm] + sm[j][mm] * sm[k][l]) / d
  return g, cov


def _cos_derivs(g, j, k):
  """Value, gradient and Hessian of ``P_jk/sqrt(P_jj P_kk)`` at the mean Gram
  ``g``, as sparse dicts keyed by P-entries ``(j, k)``."""
  pjj, pkk, pjk = g[(j, j)], g[(k, k)], g[(j, k)]
  r = jnp.sqrt(pjj * pkk)
  c0 = pjk / r
  jk, jj, kk = (j, k), (j, j), (k, k)
  grad = {jk: 1.0 / r, jj: -c0 / (2 * pjj), kk: -c0 / (2 * pkk)}
  hess = {(jk, jj): -1.0 / (2 * pjj * r), (jj, jk): -1.0 / (2 * pjj * r),
          (jk, kk): -1.0 / (2 * pkk * r), (kk, jk): -1.0 / (2 * pkk * r),
          (jj, jj): 3 * c0 / (4 * pjj ** 2), (kk, kk): 3 * c0 / (4 * pkk ** 2),
          (jj, kk): c0 / (4 * pjj * pkk), (kk, jj): c0 / (4 * pjj * pkk)}
  return c0, grad, hess


def _quad(grad, cov):
  """Σ_xy grad_x grad_y Cov(x, y) (delta-method variance)."""
  return sum(gx * gy * cov(x, y) for x, gx in grad.items() for y, gy in grad.items())


def _half_trace(hess, cov):
  """½ Σ_xy H_xy Cov(x, y) (second-order delta-method bias)."""
  return 0.5 * sum(h * cov(x, y) for (x, y), h in hess.items())


_PAIR_INDEX = {"positive": (0, 1), "same_class": (0, 2), "other_class": (0, 2)}


@functools.partial(jax.jit, static_argnames=("pair",))
def _pair_stats(sigma, s, rho, d, pair):
  c = jnp.ones_like(rho) if pair == "same_class" else rho
  g, cov = _triplet_moments(sigma, s, c, d)
  c0, grad, hess = _cos_derivs(g, *_PAIR_INDEX[pair])
  return c0, jnp.maximum(_quad(grad, cov), 0.0), _half_trace(hess, cov)


def expected_cosine(sigma, s, rho=0.0, d=jnp.inf, *, pair: str = "positive",
                    bias_correction: bool = True) -> Array:
  """Expected cosine similarity of two rows (views) of a batch.

  Shapes: ``sigma, s, rho, d`` are scalars or arrays that broadcast together;
  the result has their broadcast shape (float). Jit-able.

  Math (docs/theory.md §2), with ``q = 1 + σ² + s²``, leading order in 1/d:

  * ``pair="positive"`` (two views of one source):   ``(1 + σ²)/q``
  * ``pair="same_class"`` (two sources, one class):  ``1/q``
  * ``pair="other_class"`` (sources of two classes): ``ρ/q``

  With ``bias_correction=True`` the O(1/d) second-order delta-method term
  ``b₁/d`` is added (the remaining error is O(d⁻²)); ``d = inf`` gives the
  leading-order value.

  Args:
    sigma: within-class noise scale σ ≥ 0.
    s: augmentation strength s ≥ 0.
    rho: centre cosine ρ ∈ [-1, 1] (only used for "other_class").
    d: dimension > 0 (may be ``inf``).
    pair: "positive", "same_class" or "other_class".
    bias_correction: add the O(1/d) correction.

  Example:
    >>> float(expected_cosine(0.5, 0.5, pair="positive"))   # 1.25/1.5
    0.8333...
  """
  _check_choice("pair", pair, _PAIRS)
  sigma, s, rho, d = _prep(sigma, s, rho, d)
  c0, _, bias = _pair_stats(sigma, s, rho, d, pair)
  return c0 + bias if bias_correction else c0


def cosine_std(sigma, s, rho=0.0, d=jnp.inf, *, pair: str = "positive") -> Array:
  """Standard deviation of the cosine of a pair, leading order (O(d^-1/2)).

  Shapes and arguments as :func:`expected_cosine`. Math (docs/theory.md §2.3):
  delta method on ``cos = P_ab/sqrt(P_aa P_bb)`` with the exact Gaussian
  covariances of the bilinear forms ``P``; relative error O(1/d). Closed form:
  with ``α = σ²+s²``, ``γ = σ²`` (positives) or 0, ``c`` the centre cosine
  (1 or ρ), ``D = c + γ`` and ``N = 1 + α``:
  ``d N² Var = 2α + 2cγ + α² + γ² - 4(D/N)(γ + cα + αγ)
               + (D/N)²(2α + α² + 2cγ + γ²)``.

  Example:
    >>> float(cosine_std(1.0, 0.0, 0.0, 100.0, pair="other_class"))  # ~ sqrt(3/4)/10
    0.0866...
  """
  _check_choice("pair", pair, _PAIRS)
  sigma, s, rho, d = _prep(sigma, s, rho, d)
  _, var, _ = _pair_stats(sigma, s, rho, d, pair)
  return jnp.sqrt(var)


@functools.partial(jax.jit, static_argnames=("versus",))
def _margin_stats(sigma, s, rho, d, versus):
  c = jnp.ones_like(rho) if versus == "same_class" else rho
  g, cov = _triplet_moments(sigma, s, c, d)
  cp, gp, hp = _cos_derivs(g, 0, 1)
  cn, gn, hn = _cos_derivs(g, 0, 2)
  gdiff = dict(gp)
  for x, v in gn.items():
    gdiff[x] = gdiff.get(x, 0.0) - v
  hdiff = dict(hp)
  for x, v in hn.items():
    hdiff[x] = hdiff.get(x, 0.0) - v
  var = _quad(gdiff, cov)
  return cp - cn, jnp.maximum(var, 0.0), _half_trace(hdiff, cov)


def margin_mean(sigma, s, rho=0.0, d=jnp.inf, *, versus: str = "other_class",
                bias_correction: bool = True) -> Array:
  """Expected margin ``cos(a, b) - cos(a, e)`` (positive minus competitor).

  ``a, b`` are two views of one source, ``e`` a view of another source of the
  same class (``versus="same_class"``) or of another class (``"other_class"``).
  Shapes as :func:`expected_cosine`. Leading order: ``(1 + σ² - c)/q`` with
  c = 1 or ρ; plus the O(1/d) correction if ``bias_correction``.

  Example:
    >>> float(margin_mean(0.0, 1.0, 0.0))   # 1/2 - 0
    0.5
  """
  _check_choice("versus", versus, _VERSUS)
  sigma, s, rho, d = _prep(sigma, s, rho, d)
  m0, _, bias = _margin_stats(sigma, s, rho, d, versus)
  return m0 + bias if bias_correction else m0


def margin_std(sigma, s, rho=0.0, d=jnp.inf, *, versus: str = "other_class") -> Array:
  """Std of the margin ``cos(a, b) - cos(a, e)`` for a shared anchor ``a``.

  Leading order O(d^-1/2) by the delta method on the joint Gaussian bilinear
  forms of (a, b, e) (docs/theory.md §2.4); the two cosines are correlated
  through the shared anchor, which this includes. Shapes as
  :func:`expected_cosine`.

  Example:
    >>> float(margin_std(0.0, 1.0, 0.0, 100.0))
    0.1089...
  """
  _check_choice("versus", versus, _VERSUS)
  sigma, s, rho, d = _prep(sigma, s, rho, d)
  _, var, _ = _margin_stats(sigma, s, rho, d, versus)
  return jnp.sqrt(var)


def win_probability(sigma, s, rho=0.0, d=jnp.inf, *, versus: str = "other_class") -> Array:
  """Gaussian approximation of ``P(cos(a, b) > cos(a, e))``.

  ``Φ(margin_mean / margin_std)`` (our approximation: the margin is a smooth
  function of Gaussian bilinear forms, hence asymptotically normal). With
  ``d = inf`` the std is 0 and the result is 1 where the margin is positive
  (0.5 where it is 0). Shapes as :func:`expected_cosine`.

  Example:
    >>> float(win_probability(0.5, 1.0, 0.0, 64.0))
    0.99997...
  """
  _check_choice("versus", versus, _VERSUS)
  sigma, s, rho, d = _prep(sigma, s, rho, d)
  m0, var, bias = _margin_stats(sigma, s, rho, d, versus)
  mean = m0 + bias
  sd = jnp.sqrt(var)
  z_inf = jnp.where(mean > 0, jnp.inf, jnp.where(mean < 0, -jnp.inf, 0.0))
  z = jnp.where(sd > 0, mean / jnp.where(sd > 0, sd, 1.0), z_inf)
  return jax.scipy.special.ndtr(z)


def max_augmentation(sigma, rho=0.0, d=1024.0, *, margin_z: float = 2.0,
                     versus: str = "other_class", num_iters: int = 60) -> Array:
  """Largest augmentation strength s at which positives still win clearly.

  Solves ``margin_mean(s) = z · margin_std(s)`` for s (leading-order mean and
  std; docs/theory.md §4): the positive pair out-scores a same-class
  (``versus="same_class"``) or other-class (``"other_class"``) competitor
  sharing the anchor by at least ``z`` standard deviations of the margin.
  The ratio margin/std decreases in s (checked numerically in the tests), so
  the root is found by bisection on ``[0, s_hi]`` with ``s_hi`` from the
  asymptotic formula (:func:`max_augmentation_asymptotic`) enlarged until the
  criterion fails there. Returns 0 if the criterion already fails at s = 0
  (no augmentation is small enough), and ``inf`` if ``d = inf``.

  Shapes: ``sigma, rho, d`` scalars or broadcasting arrays, result of their
  broadcast shape. Jit-able (``margin_z``, ``versus``, ``num_iters`` static).

  Args:
    sigma: within-class noise σ ≥ 0.
    rho: centre cosine (used for ``versus="other_class"``).
    d: dimension (> 0).
    margin_z: confidence multiplier z > 0 (z = 2: about 97.7% one-sided win
      probability under the Gaussian approximation).
    versus: which competitor the positive must beat.
    num_iters: bisection steps (60 reaches float precision).

  Example:
    >>> float(max_augmentation(0.5, 0.0, 1024.0, margin_z=2.0))
    3.60...
  """
  _check_choice("versus", versus, _VERSUS)
  _check_range("margin_z", margin_z, 0.0, lo_open=True)
  sigma, _, rho, d = _prep(sigma, 0.0, rho, d)
  return _max_aug_core(sigma, rho, d, jnp.asarray(margin_z, sigma.dtype),
                       versus=versus, num_iters=num_iters)


@functools.partial(jax.jit, static_argnames=("versus", "num_iters"))
def _max_aug_core(sigma, rho, d, z, *, versus, num_iters):
  def gap(s):
    m0, var, _ = _margin_stats(sigma, s, rho, d, versus)
    return m0 - z * jnp.sqrt(var)

  c = jnp.ones_like(rho) if versus == "same_class" else rho
  d_fin = jnp.where(jnp.isinf(d), 1.0, d)
  s2 = (1.0 + sigma ** 2 - c) * jnp.sqrt(d_fin / 2.0) / z - (1.0 + sigma ** 2)
  s_hi = jnp.maximum(2.0 * jnp.sqrt(jnp.maximum(s2, 0.0)), 1.0)

  def grow(_, hi):
    return jnp.where(gap(hi) > 0, 2.0 * hi, hi)
  s_hi = jax.lax.fori_loop(0, 30, grow, s_hi)
  lo = jnp.zeros_like(s_hi)
  ok0 = gap(lo) > 0

  def body(_, lohi):
    lo, hi = lohi
    mid = 0.5 * (lo + hi)
    good = gap(mid) > 0
    return jnp.where(good, mid, lo), jnp.where(good, hi, mid)
  lo, hi = jax.lax.fori_loop(0, num_iters, body, (lo, s_hi))
  root = 0.5 * (lo + hi)
  root = jnp.where(ok0, root, 0.0)
  return jnp.where(jnp.isinf(d), jnp.inf, root)


def max_augmentation_asymptotic(sigma, rho=0.0, d=1024.0, *, margin_z: float = 2.0,
                                versus: str = "other_class") -> Array:
  """Closed-form large-s approximation of :func:`max_augmentation`.

  For s ≫ 1 the views are noise-dominated and ``margin_std → sqrt(2/d)``, so
  ``(1 + σ² - c)/(1 + σ² + s²) = z sqrt(2/d)`` gives
  ``s*² = (1 + σ² - c) sqrt(d/2)/z - (1 + σ²)`` (c = 1 for same-class, ρ for
  other-class), clipped at 0. Relative error O(1/s*²) (docs/theory.md §4.2).
  Shapes as :func:`max_augmentation`.

  Example:
    >>> float(max_augmentation_asymptotic(0.5, 0.0, 1024.0))
    3.59...
  """
  _check_choice("versus", versus, _VERSUS)
  _check_range("margin_z", margin_z, 0.0, lo_open=True)
  sigma, _, rho, d = _prep(sigma, 0.0, rho, d)
  c = jnp.ones_like(rho) if versus == "same_class" else rho
  s2 = (1.0 + sigma ** 2 - c) * jnp.sqrt(d / 2.0) / margin_z - (1.0 + sigma ** 2)
  return jnp.sqrt(jnp.maximum(s2, 0.0))


# ----------------------------------------------------------------------------
# 3. Noise after one ReLU-fusion layer
# ----------------------------------------------------------------------------

def fused_noise_rms(sigma, m, *, leak=0.0, m_other=None, rho=0.0,
                    num_classes=None) -> Array:
  """RMS distance of a fused row from its own class centre, ``sqrt(E‖f - μ_y‖²)``.

  The fused feature of row i is ``f_i = Σ_j A_ij x_j`` (one fusion layer with
  V = identity, no LayerNorm, no residual: our simplification), where row i
  puts mass ``1 - leak`` evenly on ``m`` same-class rows and ``leak`` evenly
  on ``m_other`` rows spread evenly over the other ``K - 1`` classes. Rows are
  ``x_j = μ_{y_j} + σ u_j`` with ``u_j ~ N(0, I/d)`` independent of A (for
  views use ``σ² → σ² + s²``). Exact under these assumptions
  (docs/theory.md §3):

  ``E‖f - μ_y‖² = σ² [(1-ε)²/m + ε²/m_o] + ε² (1-ρ) K/(K-1)``.

  With ``leak = 0`` this is the ``σ/√m`` law. Uneven weights: replace ``m`` by
  the effective count ``1/Σ_j w_j²`` (see :func:`relu_attention_stats`).

  Shapes: all arguments scalars or broadcasting arrays; result of their
  broadcast shape. Jit-able.

  Args:
    sigma: noise scale σ ≥ 0.
    m: number (or effective number) of same-class neighbours, > 0.
    leak: ε ∈ [0, 1], attention mass on other classes.
    m_other: (effective) number of other-class neighbours (> 0), needed when
      ``leak > 0``.
    rho: centre cosine between classes, ≥ -1/(K-1).
    num_classes: K ≥ 2, needed when ``leak > 0``.

  Raises:
    ValueError: negative σ, m ≤ 0, leak outside [0, 1], K < 2, ρ < -1/(K-1),
      or ``leak > 0`` without ``m_other``/``num_classes`` (also when ``leak``
      is traced: pass them explicitly under jit).

  Example:
    >>> float(fused_noise_rms(1.0, 4.0))
    0.5
  """
  _check_range("sigma", sigma, 0.0)
  _check_range("m", m, 0.0, lo_open=True)
  _check_range("leak", leak, 0.0, 1.0)
  _check_range("rho", rho, -1.0, 1.0)
  lk = _concrete(leak)
  if m_other is None or num_classes is None:
    if lk is None or np.any(lk > 0):
      raise ValueError("leak > 0 needs m_other and num_classes")
    m_other, num_classes = 1.0, 2.0
  _check_range("m_other", m_other, 0.0, lo_open=True)
  _check_range("num_classes", num_classes, 2.0)
  kc, rc = _concrete(num_classes), _concrete(rho)
  if kc is not None and rc is not None and np.any(rc < -1.0 / (kc - 1.0) - 1e-12):
    raise ValueError(f"rho must be >= -1/(num_classes-1) for {num_classes} "
                     f"equicorrelated centres, got {rho!r}")
  sigma, m, leak, m_other, rho, k = (jnp.asarray(x, jnp.result_type(float)) for x in
                                     (sigma, m, leak, m_other, rho, num_classes))
  var = (sigma ** 2 * ((1 - leak) ** 2 / m + leak ** 2 / m_other)
         + leak ** 2 * (1 - rho) * k / (k - 1))
  return jnp.sqrt(var)


def _relu_moments(mu, sd):
  """E[relu(X)], E[relu(X)²] for X ~ N(mu, sd²) (sd may be 0)."""
  safe = jnp.where(sd > 0, sd, 1.0)
  t = mu / safe
  cdf = jax.scipy.special.ndtr(t)
  pdf = jnp.exp(-0.5 * t ** 2) / jnp.sqrt(2 * jnp.pi)
  m1 = jnp.where(sd > 0, mu * cdf + sd * pdf, jnp.maximum(mu, 0.0))
  m2 = jnp.where(sd > 0, (mu ** 2 + sd ** 2) * cdf + mu * sd * pdf,
                 jnp.maximum(mu, 0.0) ** 2)
  return m1, m2


def relu_attention_stats(sigma, rho, d, n_same, n_other, *, s=0.0
                         ) -> Tuple[Array, Array, Array]:
  """Predicted leak and effective neighbour counts of one ReLU-cosine row.

  Row i of ``A = rownorm(relu(cos(X, X)) with zero diagonal)`` over a batch with
  ``n_same`` other rows of its class and ``n_other`` rows of other classes
  (all single views ``x = μ_y + σu + s u'``). Each cosine is approximated by a
  Gaussian with the leading-order mean and std of :func:`expected_cosine` /
  :func:`cosine_std` ("same_class" / "other_class"), and sums over rows by
  their expectations (law of large numbers; relative error O(1/n + 1/d),
  docs/theory.md §3.2):

  * ``leak = n_o E[r_o] / (n_s E[r_s] + n_o E[r_o])`` with ``r = relu(cos)``;
  * ``m_eff_same = n_s E[r_s]² / E[r_s²]``, ``m_eff_other`` likewise.

  Feed these to :func:`fused_noise_rms` (with ``σ² → σ² + s²``).

  Shapes: scalars or broadcasting arrays; three arrays of the broadcast shape.

  Example:
    >>> leak, ms, mo = relu_attention_stats(1.0, 0.5, 512.0, 15, 48)
    >>> round(float(leak), 2)   # ≈ 48·0.25/(15·0.5 + 48·0.25)
    0.62
  """
  _check_range("n_same", n_same, 0.0, lo_open=True)
  _check_range("n_other", n_other, 0.0, lo_open=True)
  sigma, s, rho, d = _prep(sigma, s, rho, d)
  n_same = jnp.asarray(n_same, sigma.dtype)
  n_other = jnp.asarray(n_other, sigma.dtype)
  cs, vs, _ = _pair_stats(sigma, s, rho, d, "same_class")
  co, vo, _ = _pair_stats(sigma, s, rho, d, "other_class")
  r1s, r2s = _relu_moments(cs, jnp.sqrt(vs))
  r1o, r2o = _relu_moments(co, jnp.sqrt(vo))
  tot = n_same * r1s + n_other * r1o
  leak = jnp.where(tot > 0, n_other * r1o / jnp.where(tot > 0, tot, 1.0), 0.0)
  m_s = jnp.where(r2s > 0, n_same * r1s ** 2 / jnp.where(r2s > 0, r2s, 1.0), n_same)
  m_o = jnp.where(r2o > 0, n_other * r1o ** 2 / jnp.where(r2o > 0, r2o, 1.0), n_other)
  return leak, m_s, m_o
