"""Noise left after one ReLU-fusion layer (fused-noise formulas).

One fusion layer averages each row with the rows its attention row selects;
these formulas give how far the fused row stays from its class centre
(:func:`fused_noise_rms`, exact under its assumptions) and predict the
attention leak to other classes and the effective neighbour counts of a
ReLU-cosine attention row (:func:`relu_attention_stats`, from the cosine
moments of :mod:`tfjax.theory.cosines`).  Derivation: ``docs/theory.md`` §3.
Jit-able ``jnp`` code that broadcasts over array arguments.
"""

from __future__ import annotations

from typing import Tuple

import jax
import jax.numpy as jnp
import numpy as np

from tfjax.theory._checks import _check_range, _concrete
from tfjax.theory.cosines import _pair_stats, _prep

Array = jax.Array

__all__ = ["fused_noise_rms", "relu_attention_stats"]


def fused_noise_rms(sigma, m, *, leak=0.0, m_other=None, rho=0.0, num_classes=None) -> Array:
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
    raise ValueError(
      f"rho must be >= -1/(num_classes-1) for {num_classes} equicorrelated centres, got {rho!r}"
    )
  sigma, m, leak, m_other, rho, k = (
    jnp.asarray(x, jnp.result_type(float)) for x in (sigma, m, leak, m_other, rho, num_classes)
  )
  var = sigma**2 * ((1 - leak) ** 2 / m + leak**2 / m_other) + leak**2 * (1 - rho) * k / (k - 1)
  return jnp.sqrt(var)


def _relu_moments(mu, sd):
  """E[relu(X)], E[relu(X)²] for X ~ N(mu, sd²) (sd may be 0)."""
  safe = jnp.where(sd > 0, sd, 1.0)
  t = mu / safe
  cdf = jax.scipy.special.ndtr(t)
  pdf = jnp.exp(-0.5 * t**2) / jnp.sqrt(2 * jnp.pi)
  m1 = jnp.where(sd > 0, mu * cdf + sd * pdf, jnp.maximum(mu, 0.0))
  m2 = jnp.where(sd > 0, (mu**2 + sd**2) * cdf + mu * sd * pdf, jnp.maximum(mu, 0.0) ** 2)
  return m1, m2


def relu_attention_stats(sigma, rho, d, n_same, n_other, *, s=0.0) -> Tuple[Array, Array, Array]:
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
  m_s = jnp.where(r2s > 0, n_same * r1s**2 / jnp.where(r2s > 0, r2s, 1.0), n_same)
  m_o = jnp.where(r2o > 0, n_other * r1o**2 / jnp.where(r2o > 0, r2o, 1.0), n_other)
  return leak, m_s, m_o
