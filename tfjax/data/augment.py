"""Data augmentations as pure JAX functions of a PRNG key and a strength.

Every augmentation ``f(key, x, strength) -> x'`` acts on ONE example, keeps
its shape and dtype, is jit- and vmap-able, and runs on device. ``strength``
is a scalar (a Python float or a traced float32): ``strength = 0`` is the
exact identity and ``strength = 1`` is the SimCLR recipe for images. Image
augmentations clip strength to [0, 1]; vector ones accept any strength >= 0
(negative values act as 0).

Images: ``x`` is ``[H, W, C]`` float in [0, 1] (outputs stay in [0, 1]).
Vectors ``[d]`` and 1-D signals ``[L, C]``: arbitrary real values.

Batches: :func:`augment_batch` vmaps one augmentation over a batch with split
keys; :func:`make_views` makes ``num_views`` augmented copies of a batch in
VIEW-MAJOR order together with their source ids (group ids for
``tfjax.target_affinity``).

Example::

    >>> key = jax.random.key(0)
    >>> x = jnp.ones((8, 32, 32, 3)) * 0.5
    >>> views, groups = make_views(key, x, strength=1.0, augment_fn=simclr_augment)
    >>> views.shape, groups.tolist()[:3], groups.tolist()[8:11]
    ((16, 32, 32, 3), [0, 1, 2], [0, 1, 2])
"""
from __future__ import annotations

import math
from typing import Callable, Tuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "random_resized_crop",
    "random_flip",
    "color_jitter",
    "random_grayscale",
    "simclr_augment",
    "gaussian_noise",
    "random_shift",
    "random_scale",
    "random_mask",
    "vector_augment",
    "signal_crop",
    "random_trend",
    "signal_augment",
    "augment_batch",
    "make_views",
    "get_augment_fn",
]

_HI = jax.lax.Precision.HIGHEST  # keep exact identities on TPU/GPU (no bf16 passes)
# ITU-R BT.601 luma weights (as in tf.image.rgb_to_grayscale).
_LUMA = (0.2989, 0.5870, 0.1140)
# RGB -> YIQ (NTSC) and its inverse, for the hue rotation.
_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], np.float32)
_YIQ_INV = np.linalg.inv(_YIQ.astype(np.float64)).astype(np.float32)


# ----------------------------------------------------------------------------
# checks
# ----------------------------------------------------------------------------
def _check_strength(strength, what: str):
    s = jnp.asarray(strength)
    chex.assert_rank(s, 0, custom_message=f"{what}: strength must be a scalar")
    return s.astype(jnp.float32)


def _check_image(x, what: str):
    x = jnp.asarray(x)
    chex.assert_rank(x, 3, custom_message=f"{what}: expected one image [H, W, C]")
    chex.assert_type(
        x, float,
        custom_message=f"{what}: image dtype must be floating point in [0, 1]")
    return x


def _check_vector(x, what: str):
    x = jnp.asarray(x)
    chex.assert_rank(
        x, {1, 2}, custom_message=f"{what}: expected a vector [d] or a signal [L, C]")
    chex.assert_type(x, float, custom_message=f"{what}: x dtype must be floating point")
    return x


def _img_strength(strength, what):
    return jnp.clip(_check_strength(strength, what), 0.0, 1.0)


# ----------------------------------------------------------------------------
# images
# ----------------------------------------------------------------------------
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
    rot_minus_id = jnp.asarray([[0.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]) * c1 + jnp.asarray(
        [[0.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]]
    ) * sn
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


# ----------------------------------------------------------------------------
# vectors and 1-D signals
# ----------------------------------------------------------------------------
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
# batches and views
# ----------------------------------------------------------------------------
def augment_batch(key, x, strength, augment_fn: Callable):
    """Apply ``augment_fn`` to every example of ``x [n, ...]`` with its own key.

    Keys: ``jax.random.split(key, n)``; ``strength`` is shared. Returns ``[n, ...]``.
    """
    x = jnp.asarray(x)
    if x.ndim < 2:
        raise ValueError(f"augment_batch: x must be a batch [n, ...], got shape {x.shape}")
    _check_strength(strength, "augment_batch")
    keys = jax.random.split(key, x.shape[0])
    return jax.vmap(augment_fn, in_axes=(0, 0, None))(keys, x, strength)


def make_views(key, x, *, num_views: int = 2, strength, augment_fn: Callable, group_offset=0) -> Tuple:
    """``num_views`` augmented copies of a batch, VIEW-MAJOR, with source ids.

    ``views = concat_v augment_batch(key_v, x)`` with ``key_v = split(key, V)[v]``;
    ``groups = tile(arange(n), V) + group_offset`` (int32): rows ``i`` and
    ``i + n`` are views of the same source. Pass ``group_offset`` (e.g. a
    device's first global index) to keep ids unique across devices.

    Args:
      key: PRNG key. x: ``[n, ...]``. num_views: static int >= 1.
      strength: scalar. augment_fn: ``f(key, example, strength)``.
    Returns:
      ``(views [V*n, ...], groups [V*n] int32)``. Same key -> same views.
    """
    if isinstance(num_views, bool) or not isinstance(num_views, int) or num_views < 1:
        raise ValueError(f"make_views: num_views must be a positive int, got {num_views!r}")
    x = jnp.asarray(x)
    if x.ndim < 2:
        raise ValueError(f"make_views: x must be a batch [n, ...], got shape {x.shape}")
    n = x.shape[0]
    keys = jax.random.split(key, num_views)
    views = jnp.concatenate([augment_batch(keys[v], x, strength, augment_fn) for v in range(num_views)], axis=0)
    groups = jnp.tile(jnp.arange(n, dtype=jnp.int32), num_views) + jnp.asarray(group_offset, jnp.int32)
    return views, groups


_DEFAULTS = {"image": simclr_augment, "vector": vector_augment, "signal": vector_augment}


def get_augment_fn(kind: str) -> Callable:
    """Default augmentation for a dataset kind: ``"image"`` -> :func:`simclr_augment`,
    ``"vector"`` / ``"signal"`` -> :func:`vector_augment`."""
    if kind not in _DEFAULTS:
        raise ValueError(f"unknown data kind {kind!r}; known: {', '.join(sorted(_DEFAULTS))}")
    return _DEFAULTS[kind]


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


# Augmentations by name (the training config's ``augment`` field).
AUGMENTATIONS = {
    "simclr": simclr_augment,
    "vector": vector_augment,
    "signal": signal_augment,
    "gaussian_noise": gaussian_noise,
    "isotropic_noise": isotropic_noise,
    "sign_flip_noise": sign_flip_noise,
}

# The data kinds each built-in augmentation accepts (images are [H, W, C];
# vector augmentations take [d] or [L, C]; the signal one needs an order in
# time). One added to AUGMENTATIONS without an entry here takes any kind.
_KINDS = {"simclr": ("image",), "vector": ("vector", "signal"), "signal": ("signal",),
          "gaussian_noise": ("vector", "signal"), "isotropic_noise": ("vector", "signal"),
          "sign_flip_noise": ("vector", "signal")}


def fits(name: str, kind: str) -> bool:
    """Whether the augmentation ``name`` ("" = the kind's default) takes data of ``kind``."""
    return not name or kind in _KINDS.get(name, (kind,))


def get_augmentation(name: str, kind: str) -> Callable:
    """The augmentation called ``name``; ``""`` gives the default of the data
    ``kind`` (:func:`get_augment_fn`). Unknown names, and a name meant for
    another kind of data, raise a ValueError."""
    if not name:
        return get_augment_fn(kind)
    if name not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {name!r}; known: {', '.join(sorted(AUGMENTATIONS))}")
    if not fits(name, kind):
        raise ValueError(f"augmentation {name!r} is for {' or '.join(_KINDS[name])} data, "
                         f"not {kind} data")
    return AUGMENTATIONS[name]
