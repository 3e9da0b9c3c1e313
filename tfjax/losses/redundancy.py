"""Redundancy-reduction losses: :func:`barlow_twins` and :func:`vicreg`.

Both standardise or regularise per-feature statistics of two views, taken
over the global batch under pmap (``psum`` of sums, see :mod:`tfjax.losses`);
neither normalises the embeddings.
"""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp

from tfjax.losses._common import (_check_views, _float, _global_mean,
                                  _global_rows, _is_concrete, _psum)

Array = jax.Array

__all__ = ["barlow_twins", "vicreg"]


def barlow_twins(z1: Array, z2: Array, *, lambda_offdiag: float = 5e-3,
                 eps: float = 1e-5,
                 axis_name: Optional[str] = None) -> Array:
  """Barlow Twins loss (Zbontar et al. 2021) of two views [n, d] -> scalar.

  Each view is standardised per feature over the (global) batch of N rows,
  ``ẑ = (z − mean) / sqrt(var + eps)`` with the biased variance (as the
  authors' BatchNorm1d(affine=False); our choice of ``eps = 1e-5`` likewise),
  then

      C = ẑ1ᵀ ẑ2 / N                        [d, d]
      loss = Σ_i (1 − C_ii)² + λ Σ_{i≠j} C_ij²

  No embedding normalisation and no loss scaling beyond that.

  Args:
    z1, z2: [n, d] float embeddings (projector outputs).
    lambda_offdiag: λ ≥ 0, weight of the redundancy term.
    eps: added to the variance (> 0).
    axis_name: pmap axis (statistics and C over the global batch).

  Example::

      >>> z = jax.random.normal(jax.random.key(0), (32, 8))
      >>> barlow_twins(z, z)   # small: C ≈ I up to the off-diagonal noise
  """
  z1, z2 = _check_views(z1, z2)
  if _is_concrete(eps) and not float(eps) > 0:
    raise ValueError(f"eps must be > 0, got {eps}")
  return _barlow_twins(z1, z2, lambda_offdiag, eps, axis_name=axis_name)


@functools.partial(jax.jit, static_argnames=("axis_name",))
def _barlow_twins(z1, z2, lambda_offdiag, eps, axis_name):
  def standardise(z):
    z = _float(z)
    mean, big_n = _global_mean(z, axis_name)
    var = _psum(jnp.sum(jnp.square(z - mean), axis=0), axis_name) / big_n
    return (z - mean) * jax.lax.rsqrt(var + eps), big_n

  a, big_n = standardise(z1)
  b, _ = standardise(z2)
  c = _psum(a.T @ b, axis_name) / big_n
  diag = jnp.diagonal(c)
  on = jnp.sum(jnp.square(1.0 - diag))
  off = jnp.sum(jnp.square(c)) - jnp.sum(jnp.square(diag))
  return on + lambda_offdiag * off


def vicreg(z1: Array, z2: Array, *, sim_coeff: float = 25.0,
           std_coeff: float = 25.0, cov_coeff: float = 1.0, eps: float = 1e-4,
           axis_name: Optional[str] = None) -> Array:
  """VICReg loss (Bardes et al. 2022) of two views [n, d] -> scalar.

  With N rows in the (global) batch and d features:

      inv  = (1/(N d)) Σ ‖z1_i − z2_i‖²                         (MSE)
      var  = ½ mean_j relu(1 − sqrt(Var_j(z1) + eps))
           + ½ mean_j relu(1 − sqrt(Var_j(z2) + eps))
      cov  = (1/d) Σ_{j≠k} Cov(z1)_jk² + (1/d) Σ_{j≠k} Cov(z2)_jk²
      loss = sim_coeff·inv + std_coeff·var + cov_coeff·cov

  Var and Cov are unbiased (divide by N − 1), as in the authors' code, so the
  global batch needs N ≥ 2 (ValueError otherwise).

  Args:
    z1, z2: [n, d] float embeddings (expander outputs).
    sim_coeff, std_coeff, cov_coeff: the three weights (25, 25, 1).
    eps: added to the variance under the square root.
    axis_name: pmap axis (statistics over the global batch).

  Example::

      >>> z = jax.random.normal(jax.random.key(0), (32, 8))
      >>> vicreg(z, z)   # inv = 0; var, cov from the sample statistics
  """
  z1, z2 = _check_views(z1, z2)
  big_n = _global_rows(z1.shape[0], axis_name)
  if big_n < 2:
    raise ValueError(
        f"vicreg needs at least 2 rows in the (global) batch, got N={big_n}")
  return _vicreg(z1, z2, sim_coeff, std_coeff, cov_coeff, eps,
                 axis_name=axis_name)


@functools.partial(jax.jit, static_argnames=("axis_name",))
def _vicreg(z1, z2, sim_coeff, std_coeff, cov_coeff, eps, axis_name):
  z1, z2 = _float(z1), _float(z2)
  d = z1.shape[1]
  big_n = _global_rows(z1.shape[0], axis_name)
  inv = _psum(jnp.sum(jnp.square(z1 - z2)), axis_name) / (big_n * d)

  def var_cov(z):
    mean, _ = _global_mean(z, axis_name)
    x = z - mean
    cov = _psum(x.T @ x, axis_name) / (big_n - 1)
    var = jnp.diagonal(cov)
    std = jnp.sqrt(var + eps)
    std_loss = jnp.mean(jax.nn.relu(1.0 - std))
    cov_loss = (jnp.sum(jnp.square(cov)) - jnp.sum(jnp.square(var))) / d
    return std_loss, cov_loss

  s1, c1 = var_cov(z1)
  s2, c2 = var_cov(z2)
  return (sim_coeff * inv + std_coeff * 0.5 * (s1 + s2)
          + cov_coeff * (c1 + c2))
