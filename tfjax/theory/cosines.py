"""Cosine statistics of augmented views and the augmentation limit.

Moments of the cosine similarity between two rows of a batch under the model
of :mod:`tfjax.theory` (two views of one source, two sources of one class, or
sources of two classes), obtained with the delta method on the exact
Gaussian covariances of the bilinear forms ``v_j·v_k`` (``docs/theory.md``
§2), and the largest augmentation strength at which a positive still beats a
competitor by a margin (§4).  All functions are jit-able ``jnp`` code that
broadcasts over array arguments.

* :func:`expected_cosine`, :func:`cosine_std`;
* :func:`margin_mean`, :func:`margin_std`, :func:`win_probability`;
* :func:`max_augmentation`, :func:`max_augmentation_asymptotic`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from tfjax.theory._checks import _check_choice, _check_range

Array = jax.Array

__all__ = [
  "expected_cosine",
  "cosine_std",
  "margin_mean",
  "margin_std",
  "win_probability",
  "max_augmentation",
  "max_augmentation_asymptotic",
]

_PAIRS = ("positive", "same_class", "other_class")
_VERSUS = ("same_class", "other_class")


def _prep(sigma, s, rho, d):
  _check_range("sigma", sigma, 0.0)
  _check_range("s", s, 0.0)
  _check_range("rho", rho, -1.0, 1.0)
  _check_range("d", d, 0.0, lo_open=True, allow_inf=True)
  sigma, s, rho, d = (jnp.asarray(x, dtype=jnp.result_type(float)) for x in (sigma, s, rho, d))
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
  alpha = sigma**2 + s**2
  gamma = sigma**2
  one, zero = jnp.ones_like(c), jnp.zeros_like(c)
  m = ((one, one, c), (one, one, c), (c, c, one))
  sm = ((alpha, gamma, zero), (gamma, alpha, zero), (zero, zero, alpha))
  g = {(j, k): m[j][k] + sm[j][k] for j in range(3) for k in range(3)}

  def cov(x, y):
    (j, k), (l, mm) = x, y
    return (
      m[j][l] * sm[k][mm]
      + m[j][mm] * sm[k][l]
      + m[k][l] * sm[j][mm]
      + m[k][mm] * sm[j][l]
      + sm[j][l] * sm[k][mm]
      + sm[j][mm] * sm[k][l]
    ) / d

  return g, cov


def _cos_derivs(g, j, k):
  """Value, gradient and Hessian of ``P_jk/sqrt(P_jj P_kk)`` at the mean Gram
  ``g``, as sparse dicts keyed by P-entries ``(j, k)``."""
  pjj, pkk, pjk = g[(j, j)], g[(k, k)], g[(j, k)]
  r = jnp.sqrt(pjj * pkk)
  c0 = pjk / r
  jk, jj, kk = (j, k), (j, j), (k, k)
  grad = {jk: 1.0 / r, jj: -c0 / (2 * pjj), kk: -c0 / (2 * pkk)}
  hess = {
    (jk, jj): -1.0 / (2 * pjj * r),
    (jj, jk): -1.0 / (2 * pjj * r),
    (jk, kk): -1.0 / (2 * pkk * r),
    (kk, jk): -1.0 / (2 * pkk * r),
    (jj, jj): 3 * c0 / (4 * pjj**2),
    (kk, kk): 3 * c0 / (4 * pkk**2),
    (jj, kk): c0 / (4 * pjj * pkk),
    (kk, jj): c0 / (4 * pjj * pkk),
  }
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


def expected_cosine(
  sigma, s, rho=0.0, d=jnp.inf, *, pair: str = "positive", bias_correction: bool = True
) -> Array:
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


def margin_mean(
  sigma, s, rho=0.0, d=jnp.inf, *, versus: str = "other_class", bias_correction: bool = True
) -> Array:
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


def max_augmentation(
  sigma,
  rho=0.0,
  d=1024.0,
  *,
  margin_z: float = 2.0,
  versus: str = "other_class",
  num_iters: int = 60,
) -> Array:
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
  return _max_aug_core(
    sigma, rho, d, jnp.asarray(margin_z, sigma.dtype), versus=versus, num_iters=num_iters
  )


@functools.partial(jax.jit, static_argnames=("versus", "num_iters"))
def _max_aug_core(sigma, rho, d, z, *, versus, num_iters):
  def gap(s):
    m0, var, _ = _margin_stats(sigma, s, rho, d, versus)
    return m0 - z * jnp.sqrt(var)

  c = jnp.ones_like(rho) if versus == "same_class" else rho
  d_fin = jnp.where(jnp.isinf(d), 1.0, d)
  s2 = (1.0 + sigma**2 - c) * jnp.sqrt(d_fin / 2.0) / z - (1.0 + sigma**2)
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


def max_augmentation_asymptotic(
  sigma, rho=0.0, d=1024.0, *, margin_z: float = 2.0, versus: str = "other_class"
) -> Array:
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
  s2 = (1.0 + sigma**2 - c) * jnp.sqrt(d / 2.0) / margin_z - (1.0 + sigma**2)
  return jnp.sqrt(jnp.maximum(s2, 0.0))
