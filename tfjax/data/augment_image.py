"""Image augmentations (SimCLR's recipe) as pure JAX functions of one image.

Every augmentation ``f(key, x, strength) -> x'`` acts on ONE image ``[H, W, C]``
float in [0, 1], keeps its shape and dtype (outputs stay in [0, 1]), is
jit- and vmap-able and runs on device.  ``strength`` is clipped to [0, 1]:
0 is the exact identity, 1 the SimCLR recipe.
"""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np

from tfjax.data._augment_checks import check_strength as _check_strength

__all__ = [
  "random_resized_crop",
  "random_flip",
  "color_jitter",
  "random_grayscale",
  "simclr_augment",
]

_HI = jax.lax.Precision.HIGHEST  # keep exact identities on TPU/GPU (no bf16 passes)
# ITU-R BT.601 luma weights (as in tf.image.rgb_to_grayscale).
_LUMA = (0.2989, 0.5870, 0.1140)
# RGB -> YIQ (NTSC) and its inverse, for the hue rotation.
_YIQ = np.array(
  [[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], np.float32
)
_YIQ_INV = np.linalg.inv(_YIQ.astype(np.float64)).astype(np.float32)


def _check_image(x, what: str):
  x = jnp.asarray(x)
  chex.assert_rank(x, 3, custom_message=f"{what}: expected one image [H, W, C]")
  chex.assert_type(x, float, custom_message=f"{what}: image dtype must be floating point in [0, 1]")
  return x


def _img_strength(strength, what):
  return jnp.clip(_check_strength(strength, what), 0.0, 1.0)


def _interp_matrix(start, length, n: int, dtype):
  """Bilinear resampling weights ``[n, n]`` (output i, source h).

  Output pixel i samples the source at ``y_i = start*n + (i + 0.5)*length - 0.5``
  (pixel centres; ``start``, ``length`` relative to the image size), clamped
  to [0, n-1]; weight = tent ``max(0, 1 - |y_i - h|)``. With start=0,
  length=1: y_i = i exactly, so the matrix is exactly the identity.
  """
  i = jnp.arange(n, dtype=jnp.float32)
  y = jnp.clip(start * n + (i + 0.5) * length - 0.5, 0.0, n - 1.0)
  h = jnp.arange(n, dtype=jnp.float32)
  return jnp.maximum(0.0, 1.0 - jnp.abs(y[:, None] - h[None, :])).astype(dtype)


def random_resized_crop(key, x, strength):
  """Random crop of random area and aspect ratio, resized back to ``[H, W]``.

  Area fraction ``a ~ U(1 - 0.92*s, 1)``, log aspect ratio ``~ U(-s*log(4/3),
  s*log(4/3))`` (s = strength clipped to [0, 1]; s = 1 is SimCLR's
  scale (0.08, 1), ratio (3/4, 4/3)). Relative crop width ``sqrt(a*r)`` and
  height ``sqrt(a/r)`` are clipped to 1 instead of SimCLR's rejection
  sampling (our choice); the offset is uniform. Resampling is bilinear
  (separable interpolation matrices), no antialiasing (our choice).

  Args:
    key: PRNG key. x: ``[H, W, C]`` float in [0, 1]. strength: scalar.
  Returns:
    ``[H, W, C]``, same dtype, values in [0, 1] (convex combinations).
  """
  x = _check_image(x, "random_resized_crop")
  s = _img_strength(strength, "random_resized_crop")
  H, W, _ = x.shape
  u = jax.random.uniform(key, (4,))  # one draw: fewer RNG kernels to compile
  lo = 1.0 - 0.92 * s
  area = lo + u[0] * (1.0 - lo)
  log_r = s * math.log(4.0 / 3.0) * (2.0 * u[1] - 1.0)
  ratio = jnp.exp(log_r)
  cw = jnp.minimum(jnp.sqrt(area * ratio), 1.0)
  ch = jnp.minimum(jnp.sqrt(area / ratio), 1.0)
  oy = u[2] * (1.0 - ch)
  ox = u[3] * (1.0 - cw)
  ry = _interp_matrix(oy, ch, H, x.dtype)
  rx = _interp_matrix(ox, cw, W, x.dtype)
  return jnp.einsum("ih,hwc,jw->ijc", ry, x, rx, precision=_HI)


def random_flip(key, x, strength):
  """Horizontal flip with probability ``0.5 * s`` (s clipped to [0, 1]).

  x: ``[H, W, C]`` -> ``[H, W, C]``. s = 1 is SimCLR's p = 0.5.
  """
  x = _check_image(x, "random_flip")
  s = _img_strength(strength, "random_flip")
  return jnp.where(jax.random.uniform(key) < 0.5 * s, x[:, ::-1, :], x)


def _gray(x):
  """Luma ``[H, W, 1]`` of an RGB image ``[H, W, 3]``; a 1-channel image is its own gray."""
  if x.shape[-1] == 1:
    return x
  if x.shape[-1] != 3:
    raise ValueError(f"colour ops need C in (1, 3), got image shape {x.shape}")
  w = jnp.asarray(_LUMA, x.dtype)
  return jnp.sum(x * w, axis=-1, keepdims=True)


def _brightness(x, f):
  return jnp.clip(x * f, 0.0, 1.0)


def _contrast(x, f):
  m = jnp.mean(_gray(x))
  return jnp.clip(x + (f - 1.0) * (x - m), 0.0, 1.0)


def _saturation(x, f):
  return jnp.clip(x + (f - 1.0) * (x - _gray(x)), 0.0, 1.0)


def _hue(x, delta):
  """Rotate hue by ``delta`` turns in YIQ space; exact identity at delta = 0."""
  if x.shape[-1] == 1:
    return x
  t, t_inv = jnp.asarray(_YIQ), jnp.asarray(_YIQ_INV)
  th = 2.0 * jnp.pi * delta
  c1, sn = jnp.cos(th) - 1.0, jnp.sin(th)
  rot_minus_id = (
    jnp.asarray([[0.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]) * c1
    + jnp.asarray([[0.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]]) * sn
  )
  m = (t_inv @ rot_minus_id @ t).astype(x.dtype)  # = T^-1 (R - I) T, exactly 0 at delta = 0
  return jnp.clip(x + jnp.einsum("hwc,dc->hwd", x, m, precision=_HI), 0.0, 1.0)


def color_jitter(key, x, strength):
  """SimCLR colour jitter, applied with probability 0.8, ops in random order.

  Brightness factor ``~ U(1 - 0.8s, 1 + 0.8s)`` (multiplicative), contrast
  and saturation factors likewise, hue shift ``~ U(-0.2s, 0.2s)`` turns
  (rotation in YIQ space; our choice vs HSV). Each op clips to [0, 1].
  Saturation and hue are no-ops for 1-channel images. s = strength clipped
  to [0, 1]; s = 0 is the exact identity.

  x: ``[H, W, C]`` (C in {1, 3}) -> ``[H, W, C]`` in [0, 1].
  """
  x = _check_image(x, "color_jitter")
  if x.shape[-1] not in (1, 3):
    raise ValueError(f"color_jitter: need C in (1, 3), got image shape {x.shape}")
  s = _img_strength(strength, "color_jitter")
  u = jax.random.uniform(key, (9,))  # [apply, 4 factors, 4 sort keys for the order]
  sym = 2.0 * u[1:5] - 1.0  # U(-1, 1)
  fb, fc, fs = 1.0 + 0.8 * s * sym[0], 1.0 + 0.8 * s * sym[1], 1.0 + 0.8 * s * sym[2]
  dh = 0.2 * s * sym[3]
  ops = [
    lambda y: _brightness(y, fb),
    lambda y: _contrast(y, fc),
    lambda y: _saturation(y, fs),
    lambda y: _hue(y, dh),
  ]
  perm = jnp.argsort(u[5:9])  # a uniformly random order of the four ops
  # A loop (not an unrolled Python for) keeps the compiled graph small: under
  # vmap each switch evaluates all four ops and selects one.
  y = jax.lax.fori_loop(0, 4, lambda step, y: jax.lax.switch(perm[step], ops, y), x)
  return jnp.where(u[0] < 0.8, y, x)


def random_grayscale(key, x, strength):
  """Replace the image by its luma (3 copies) with probability ``0.2 * s``.

  x: ``[H, W, C]`` -> ``[H, W, C]``; no-op for 1-channel images.
  """
  x = _check_image(x, "random_grayscale")
  s = _img_strength(strength, "random_grayscale")
  if x.shape[-1] == 1:
    return x
  g = jnp.broadcast_to(_gray(x), x.shape)
  return jnp.where(jax.random.uniform(key) < 0.2 * s, g, x)


def simclr_augment(key, x, strength):
  """SimCLR's CIFAR recipe scaled by ``strength``: crop -> flip -> jitter -> gray.

  At strength 1: random resized crop (0.08..1, 3/4..4/3), flip p=0.5,
  colour jitter (0.8, 0.8, 0.8, 0.2) with p=0.8, grayscale p=0.2. No blur
  (SimCLR uses blur for ImageNet only). x: ``[H, W, C]`` -> same, in [0, 1].
  """
  x = _check_image(x, "simclr_augment")
  k1, k2, k3, k4 = jax.random.split(key, 4)
  x = random_resized_crop(k1, x, strength)
  x = random_flip(k2, x, strength)
  x = color_jitter(k3, x, strength)
  return random_grayscale(k4, x, strength)
