"""Vector and 1-D signal augmentations as pure JAX functions of one example.

Every augmentation ``f(key, x, strength) -> x'`` acts on ONE vector ``[d]``
or signal ``[L, C]`` of arbitrary real values, keeps its shape and dtype, is
jit- and vmap-able and runs on device.  ``strength >= 0`` (negative values
act as 0); 0 is the exact identity (:func:`sign_flip_noise` aside, which
always flips the sign with probability 1/2).
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from tfjax.data._augment_checks import check_strength as _check_strength

__all__ = [
  "gaussian_noise",
  "random_shift",
  "random_scale",
  "random_mask",
  "vector_augment",
  "signal_crop",
  "random_trend",
  "signal_augment",
  "isotropic_noise",
  "sign_flip_noise",
]


def _check_vector(x, what: str):
  x = jnp.asarray(x)
  chex.assert_rank(x, {1, 2}, custom_message=f"{what}: expected a vector [d] or a signal [L, C]")
  chex.assert_type(x, float, custom_message=f"{what}: x dtype must be floating point")
  return x


def _vec_strength(strength, what):
  return jnp.maximum(_check_strength(strength, what), 0.0)


def _rms(x):
  """Root mean square of ``x``, scale-safe (divided by max |x| before
  squaring) and with a finite gradient at x = 0 (where it is 0)."""
  m = jnp.max(jnp.abs(x))
  pos = m > 0
  m = jnp.where(pos, m, 1.0)
  ms = jnp.mean(jnp.square(x / m))
  return jnp.where(pos, m * jnp.sqrt(jnp.where(pos, ms, 1.0)), 0.0)


def gaussian_noise(key, x, strength):
  """Add isotropic noise proportional to the example's RMS (our choice).

  ``x' = x + s * rms(x) * eps``, ``eps ~ N(0, I)``, ``rms(x) = ||x|| / sqrt(x.size)``,
  so ``E||x' - x||^2 = s^2 ||x||^2`` (scale-free). x: ``[d]`` or ``[L, C]``.
  """
  x = _check_vector(x, "gaussian_noise")
  s = _vec_strength(strength, "gaussian_noise")
  rms = _rms(x)
  return x + (s * rms) * jax.random.normal(key, x.shape, x.dtype)


def random_shift(key, x, strength):
  """Circular shift along the first axis by an integer in ``[-m, m]``.

  ``m = floor(min(s, 1) * L / 4)`` (our choice). x: ``[L]`` or ``[L, C]``.
  """
  x = _check_vector(x, "random_shift")
  s = jnp.minimum(_vec_strength(strength, "random_shift"), 1.0)
  L = x.shape[0]
  m = jnp.floor(s * L / 4.0).astype(jnp.int32)
  # uniform integer in [-m, m]
  shift = jnp.minimum(jnp.floor(jax.random.uniform(key) * (2 * m + 1)).astype(jnp.int32), 2 * m) - m
  return jnp.roll(x, shift, axis=0)


def random_scale(key, x, strength):
  """Multiply by a log-uniform factor ``exp(U(-0.5s, 0.5s))`` (our choice).

  x: ``[d]`` or ``[L, C]``. Strength 1 gives factors in [0.61, 1.65].
  """
  x = _check_vector(x, "random_scale")
  s = _vec_strength(strength, "random_scale")
  return x * jnp.exp(0.5 * s * jax.random.uniform(key, minval=-1.0, maxval=1.0)).astype(x.dtype)


def random_mask(key, x, strength):
  """Zero each position of the first axis with probability ``min(0.5 s, 1)``.

  For a signal ``[L, C]`` all channels of a masked time step are zeroed.
  """
  x = _check_vector(x, "random_mask")
  p = jnp.minimum(0.5 * _vec_strength(strength, "random_mask"), 1.0)
  drop = jax.random.uniform(key, (x.shape[0],)) < p
  drop = drop.reshape((x.shape[0],) + (1,) * (x.ndim - 1))
  return jnp.where(drop, jnp.zeros_like(x), x)


def vector_augment(key, x, strength):
  """Default vector / signal augmentation: shift -> scale -> mask -> noise.

  The circular shift is applied only to signals ``[L, C]`` (2-D input); the
  coordinates of a flat vector ``[d]`` have no order to shift (our choice).
  """
  x = _check_vector(x, "vector_augment")
  k1, k2, k3, k4 = jax.random.split(key, 4)
  if x.ndim == 2:
    x = random_shift(k1, x, strength)
  x = random_scale(k2, x, strength)
  x = random_mask(k3, x, strength)
  return gaussian_noise(k4, x, strength)


def signal_crop(key, x, strength):
  """A random crop of a signal, resized to its length (circular, linear
  interpolation): SimCLR's random resized crop in one dimension.

  Output step ``i`` reads the input at ``p_i = (c + (i - c) r + t) mod L``
  (``c = (L - 1) / 2``), linearly interpolated between the two neighbouring
  steps (circularly), where the crop keeps a fraction ``r ~ U(1 - 0.4 s, 1)``
  of the signal and is shifted by ``t ~ U(-s L / 2, s L / 2)``; s = strength
  clipped to [0, 1]. At s = 1 every circular shift is reachable and up to
  40 % of the signal is cut and the rest stretched by up to 1/0.6 —
  translation and dilation, the nuisances of MNIST-1D's generator (the
  ranges are our choice). With r = 1 and an integer t it is a circular roll.
  x: ``[L, C]``.
  """
  x = _check_vector(x, "signal_crop")
  if x.ndim != 2:
    raise ValueError(f"signal_crop: expected a signal [L, C], got shape {x.shape}")
  s = jnp.clip(_check_strength(strength, "signal_crop"), 0.0, 1.0)
  k1, k2 = jax.random.split(key)
  L = x.shape[0]
  r = 1.0 - 0.4 * s * jax.random.uniform(k1)
  t = jax.random.uniform(k2, minval=-0.5, maxval=0.5) * s * L
  c = 0.5 * (L - 1)
  p = jnp.mod(c + (jnp.arange(L, dtype=jnp.float32) - c) * r + t, L)
  lo = jnp.floor(p)
  w = (p - lo)[:, None].astype(x.dtype)
  lo = lo.astype(jnp.int32) % L
  hi = (lo + 1) % L
  return (1 - w) * x[lo] + w * x[hi]


def random_trend(key, x, strength):
  """Add a linear trend: ``x_i + a * rms(x) * (i / (L - 1) - 1/2)``, ``a ~ U(-s, s)``.

  MNIST-1D's "shear" nuisance (our scale: relative to the signal's RMS).
  x: ``[L]`` or ``[L, C]`` (the same ramp on every channel).
  """
  x = _check_vector(x, "random_trend")
  s = _vec_strength(strength, "random_trend")
  L = x.shape[0]
  a = jax.random.uniform(key, minval=-1.0, maxval=1.0) * s
  rms = _rms(x)
  ramp = jnp.linspace(-0.5, 0.5, L, dtype=x.dtype).reshape((L,) + (1,) * (x.ndim - 1))
  return x + (a * rms).astype(x.dtype) * ramp


def signal_augment(key, x, strength):
  """Augmentation for 1-D signals ``[L, C]`` from the nuisances of their
  generation (our choice, modelled on MNIST-1D's generator): a resized
  crop (circular shift + stretch, :func:`signal_crop`) -> scale -> linear trend -> noise.

  The noise is :func:`gaussian_noise` at a tenth of the strength (SNR 10 at
  s = 1) and nothing is masked, unlike :func:`vector_augment`.
  """
  x = _check_vector(x, "signal_augment")
  k1, k2, k3, k4 = jax.random.split(key, 4)
  x = signal_crop(k1, x, strength)
  x = random_scale(k2, x, strength)
  x = random_trend(k3, x, strength)
  return gaussian_noise(k4, x, 0.1 * _vec_strength(strength, "signal_augment"))


# ----------------------------------------------------------------------------
# absolute-scale noise (the theory's model) and CLOA's sign flip
# ----------------------------------------------------------------------------
def isotropic_noise(key, x, strength):
  """Add noise of expected norm ``s``: ``x' = x + s * eps / sqrt(x.size)``.

  ``eps ~ N(0, I)``, so ``E||x' - x||^2 = s^2`` whatever ``x``'s scale: the
  view model of docs/theory.md (``v = x + s u'``, ``u' ~ N(0, I/d)``).
  """
  x = _check_vector(x, "isotropic_noise")
  s = _vec_strength(strength, "isotropic_noise")
  return x + (s / jnp.sqrt(float(x.size))) * jax.random.normal(key, x.shape, x.dtype)


def sign_flip_noise(key, x, strength):
  """CLOA's toy augmentation: negate with probability 1/2, then
  :func:`isotropic_noise` of norm ``s``. Strength 0 still flips the sign."""
  k1, k2 = jax.random.split(key)
  x = _check_vector(x, "sign_flip_noise")
  sign = jnp.where(jax.random.bernoulli(k1, 0.5), -1.0, 1.0).astype(x.dtype)
  return isotropic_noise(k2, sign * x, strength)
