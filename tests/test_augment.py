"""Tests for tfjax.data.augment: pure JAX augmentations with a strength knob."""

import types

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from tests import helpers
from tfjax.data import augment, augment_image, augment_vector

# One namespace for the augmentations of every module (and the test helpers).
A = types.SimpleNamespace(
  **{
    **vars(augment_image),
    **vars(augment_vector),
    **vars(augment),
    "make_views": helpers.make_views,
    "augment_batch": helpers.augment_batch,
  }
)

IMAGE_FNS = [
  A.random_resized_crop,
  A.random_flip,
  A.color_jitter,
  A.random_grayscale,
  A.simclr_augment,
]
VECTOR_FNS = [
  A.gaussian_noise,
  A.random_shift,
  A.random_scale,
  A.random_mask,
  A.vector_augment,
  A.signal_crop,
  A.random_trend,
  A.signal_augment,
]


def _image(seed, shape=(12, 10, 3)):
  return jnp.asarray(np.random.default_rng(seed).uniform(0.0, 1.0, shape), jnp.float32)


def _vec(seed, shape):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


class ShapeRangeTest(chex.TestCase):
  # The composites run every component op; the components get their own
  # numeric checks below (kept to few compiles: 2 cores, slow XLA:CPU).
  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters((12, 10, 3), (8, 8, 1))
  def test_images_keep_shape_dtype_range(self, *shape):
    x = _image(1, shape)
    f = self.variant(A.simclr_augment)
    for k in range(3):
      y = f(jax.random.key(k), x, 1.0)
      chex.assert_shape(y, shape)
      assert y.dtype == jnp.float32
      assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
      assert bool(jnp.all(jnp.isfinite(y)))

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters((16,), (20, 1), (20, 3))
  def test_vectors_and_signals_keep_shape(self, *shape):
    y = self.variant(A.vector_augment)(jax.random.key(0), _vec(2, shape), 1.0)
    chex.assert_shape(y, shape)
    assert y.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(y)))


@pytest.mark.parametrize("family", ["image", "vector"])
def test_strength_zero_is_exact_identity_traced(family):
  fns = IMAGE_FNS if family == "image" else VECTOR_FNS
  x = _image(4) if family == "image" else _vec(4, (20, 2))
  xs = jnp.stack([x] * 4)
  keys = jax.random.split(jax.random.key(7), 4)

  @jax.jit
  def all_fns(keys, xs, s):  # strength traced inside jit + vmap
    return [jax.vmap(fn, in_axes=(0, 0, None))(keys, xs, s) for fn in fns]

  for fn, y in zip(fns, all_fns(keys, xs, jnp.float32(0.0))):
    np.testing.assert_array_equal(np.asarray(y), np.asarray(xs), err_msg=fn.__name__)
  # and with a Python float, outside jit, for the composite
  composite = A.simclr_augment if family == "image" else A.vector_augment
  np.testing.assert_array_equal(np.asarray(composite(keys[0], x, 0.0)), np.asarray(x))


@pytest.mark.parametrize("fn", [A.simclr_augment, A.vector_augment], ids=lambda f: f.__name__)
def test_determinism_per_key(fn):
  x = _image(5) if fn is A.simclr_augment else _vec(5, (20, 2))
  f = jax.jit(fn)
  a = f(jax.random.key(11), x, 1.0)
  b = f(jax.random.key(11), x, 1.0)
  c = f(jax.random.key(12), x, 1.0)
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert not np.array_equal(np.asarray(a), np.asarray(c))


# ----------------------------------------------------------------------------
# numerics against float64 NumPy references
# ----------------------------------------------------------------------------
def _np_bilinear_rows_cols(img, ys, xs):
  """float64 bilinear sample img [H, W, C] at row coords ys [H'] and col coords xs [W']."""
  img = np.asarray(img, np.float64)
  H, W, _ = img.shape

  def weights(c, n):
    lo = np.clip(np.floor(c).astype(int), 0, n - 1)
    hi = np.clip(lo + 1, 0, n - 1)
    f = c - lo
    return lo, hi, f

  y0, y1, fy = weights(ys, H)
  x0, x1, fx = weights(xs, W)
  top = img[y0][:, x0] * (1 - fx)[None, :, None] + img[y0][:, x1] * fx[None, :, None]
  bot = img[y1][:, x0] * (1 - fx)[None, :, None] + img[y1][:, x1] * fx[None, :, None]
  return top * (1 - fy)[:, None, None] + bot * fy[:, None, None]


def test_random_resized_crop_matches_numpy_bilinear_and_bounds():
  H, W = 16, 12
  rng = np.random.default_rng(0)
  ramp_y = np.broadcast_to(np.arange(H)[:, None] / (H - 1), (H, W))
  ramp_x = np.broadcast_to(np.arange(W)[None, :] / (W - 1), (H, W))
  tex = rng.uniform(size=(H, W))
  img = jnp.asarray(np.stack([ramp_y, ramp_x, tex], -1), jnp.float32)
  f = jax.jit(A.random_resized_crop)
  for s in [0.3, 1.0]:
    lo = 1.0 - 0.92 * s
    rmax = (4.0 / 3.0) ** s
    for k in range(12):
      out = np.asarray(f(jax.random.key(k), img, s), np.float64)
      # The ramp channels reveal the (clamped) sampling coordinates.
      ys = out[:, 0, 0] * (H - 1)
      xs = out[0, :, 1] * (W - 1)
      np.testing.assert_allclose(out[:, :, 0], np.broadcast_to(out[:, :1, 0], (H, W)), atol=1e-5)
      # Coordinates are affine in the pixel index (where not clamped at the border).
      dy, dx = np.diff(ys), np.diff(xs)
      ch, cw = np.median(dy), np.median(dx)
      inner_y = (ys[:-1] > 1e-4) & (ys[1:] < H - 1 - 1e-4)
      inner_x = (xs[:-1] > 1e-4) & (xs[1:] < W - 1 - 1e-4)
      np.testing.assert_allclose(dy[inner_y], ch, atol=1e-4)
      np.testing.assert_allclose(dx[inner_x], cw, atol=1e-4)
      assert lo - 1e-4 <= ch * cw <= 1.0 + 1e-4
      assert 1 / rmax - 1e-3 <= cw / ch <= rmax + 1e-3
      # The texture channel is the float64 bilinear resampling at those coordinates.
      ref = _np_bilinear_rows_cols(np.asarray(img)[..., 2:], ys, xs)[..., 0]
      np.testing.assert_allclose(out[..., 2], ref, atol=2e-5)


def test_flip_and_grayscale_are_one_of_two_outcomes():
  x = _image(8)
  xn = np.asarray(x, np.float64)
  luma = xn @ np.array([0.2989, 0.5870, 0.1140])
  n_flip = n_gray = 0
  flip, gray = jax.jit(A.random_flip), jax.jit(A.random_grayscale)
  for k in range(200):
    key = jax.random.key(k)
    y = np.asarray(flip(key, x, 1.0))
    if np.array_equal(y, xn[:, ::-1].astype(np.float32)):
      n_flip += 1
    else:
      np.testing.assert_array_equal(y, np.asarray(x))
    g = np.asarray(gray(key, x, 1.0), np.float64)
    if np.array_equal(g, xn):
      continue
    n_gray += 1
    np.testing.assert_allclose(g, np.repeat(luma[..., None], 3, -1), atol=1e-6)
  # p = 0.5 and 0.2 at strength 1: binomial(200) stays well within these bounds.
  assert 70 <= n_flip <= 130 and 15 <= n_gray <= 65


def test_hue_rotation_matches_numpy_yiq():
  x = jnp.asarray(np.random.default_rng(3).uniform(0.35, 0.65, (6, 5, 3)), jnp.float32)
  yiq = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
  for delta in [0.05, -0.1, 0.2]:
    th = 2 * np.pi * delta
    rot = np.array([[1, 0, 0], [0, np.cos(th), -np.sin(th)], [0, np.sin(th), np.cos(th)]])
    ref = np.asarray(x, np.float64) @ (np.linalg.inv(yiq) @ rot @ yiq).T
    assume_no_clip = (ref > 0).all() and (ref < 1).all()
    assert assume_no_clip
    np.testing.assert_allclose(np.asarray(A._hue(x, delta)), ref, atol=1e-5)
  np.testing.assert_allclose(np.asarray(A._hue(x, 1.0)), np.asarray(x), atol=1e-5)  # full turn


def test_color_jitter_on_one_channel_is_brightness_contrast_only():
  x = _image(9, (8, 8, 1))
  xn = np.asarray(x, np.float64)
  jitter = jax.jit(A.color_jitter)
  for k in range(10):
    y = np.asarray(jitter(jax.random.key(k), x, 1.0), np.float64)
    # brightness and contrast are affine maps clipped to [0, 1]: the pixel
    # order is preserved (monotone non-decreasing map of the input values).
    order = np.argsort(xn.ravel(), kind="stable")
    assert np.all(np.diff(y.ravel()[order]) >= -1e-6)


def test_vector_ops_against_numpy():
  x = _vec(10, (24, 2))
  xn = np.asarray(x, np.float64)
  shift, scale, mask = jax.jit(A.random_shift), jax.jit(A.random_scale), jax.jit(A.random_mask)
  for k in range(20):
    key = jax.random.key(k)
    # shift: a circular roll by at most floor(s * L / 4) = 3 at s = 0.5
    y = np.asarray(shift(key, x, 0.5), np.float64)
    assert any(np.array_equal(y, np.roll(xn, j, axis=0)) for j in range(-3, 4))
    # scale: one factor in [e^-0.5, e^0.5] at s = 1
    y = np.asarray(scale(key, x, 1.0), np.float64)
    f = (y * xn).sum() / (xn * xn).sum()
    assert np.exp(-0.5) - 1e-6 <= f <= np.exp(0.5) + 1e-6
    np.testing.assert_allclose(y, f * xn, rtol=1e-5, atol=1e-6)
    # mask: every time step either untouched or all zero
    y = np.asarray(mask(key, x, 1.0), np.float64)
    zero = np.all(y == 0, axis=1)
    np.testing.assert_array_equal(y[~zero], xn[~zero])


def _np_crop(x, r, t):
  """float64 reference of signal_crop keeping fraction r, shifted by t."""
  L = x.shape[0]
  c = 0.5 * (L - 1)
  p = np.mod(c + (np.arange(L) - c) * r + t, L)
  lo = np.floor(p).astype(int) % L
  w = (p - np.floor(p))[:, None]
  return (1 - w) * x[lo] + w * x[(lo + 1) % L]


def test_signal_crop_and_trend_against_numpy():
  x = _vec(12, (40, 2))
  xn = np.asarray(x, np.float64)
  crop, trend = jax.jit(A.signal_crop), jax.jit(A.random_trend)
  for k in range(10):
    key = jax.random.key(k)
    for s in [0.3, 1.0]:
      k1, k2 = jax.random.split(key)  # the uniforms the function draws
      r = 1.0 - 0.4 * s * float(jax.random.uniform(k1))
      t = float(jax.random.uniform(k2, minval=-0.5, maxval=0.5)) * s * 40
      assert 1 - 0.4 * s - 1e-6 <= r <= 1 and abs(t) <= 20 * s
      np.testing.assert_allclose(
        np.asarray(crop(key, x, s), np.float64), _np_crop(xn, r, t), rtol=1e-4, atol=1e-4
      )
    # trend: x plus a * rms * ramp with |a| <= s
    d = np.asarray(trend(key, x, 0.5), np.float64) - xn
    ramp = np.linspace(-0.5, 0.5, 40)[:, None]
    rms = np.sqrt(np.mean(xn**2))
    a = (d * ramp).sum() / (ramp * ramp).sum() / 2 / rms
    assert abs(a) <= 0.5 + 1e-5
    np.testing.assert_allclose(d, a * rms * np.broadcast_to(ramp, d.shape), atol=1e-5)
  # the reference itself: r = 1 with an integer shift is a circular roll
  np.testing.assert_allclose(_np_crop(xn, 1.0, 3.0), np.roll(xn, -3, axis=0))
  with pytest.raises(ValueError, match=r"signal_crop: expected a signal \[L, C\]"):
    A.signal_crop(jax.random.key(0), jnp.zeros((5,)), 1.0)


def test_signal_augment_by_name_and_finite_gradient():
  assert A.get_augmentation("signal", "signal") is A.signal_augment
  with pytest.raises(ValueError, match="augmentation 'signal' is for signal data, not vector data"):
    A.get_augmentation("signal", "vector")
  with pytest.raises(ValueError, match="augmentation 'simclr' is for image data, not signal data"):
    A.get_augmentation("simclr", "signal")
  # one a user registers takes any kind of data
  A.AUGMENTATIONS["my_identity"] = lambda key, x, s: x
  try:
    assert A.fits("my_identity", "image") and A.get_augmentation("my_identity", "signal")
  finally:
    del A.AUGMENTATIONS["my_identity"]
  y = jax.jit(A.signal_augment)(jax.random.key(0), _vec(3, (40, 1)), 1.0)
  chex.assert_shape(y, (40, 1))
  g = jax.grad(lambda x: jnp.sum(A.signal_augment(jax.random.key(1), x, 1.0) ** 2))(
    jnp.zeros((40, 1))
  )
  assert bool(jnp.all(jnp.isfinite(g)))


def test_mask_rate_and_noise_scale_statistics():
  keys = jax.random.split(jax.random.key(0), 400)
  x = _vec(11, (64,))
  xn = np.asarray(x, np.float64)
  for s in [0.4, 1.0]:
    m = np.asarray(jax.jit(jax.vmap(A.random_mask, (0, None, None)))(keys, x, s))
    rate = np.mean(m == 0)
    p = 0.5 * s
    assert abs(rate - p) < 4 * np.sqrt(p * (1 - p) / m.size)
    d = (
      np.asarray(jax.jit(jax.vmap(A.gaussian_noise, (0, None, None)))(keys, x, s), np.float64) - xn
    )
    want = s * np.sqrt(np.mean(xn**2))
    assert abs(d.std() / want - 1) < 0.03


def test_gradient_through_crop_is_finite():
  # edge case: an all-zero image and the strongest crop
  x = jnp.zeros((8, 8, 1))
  g = jax.jit(
    jax.grad(lambda x: jnp.sum(A.random_resized_crop(jax.random.key(0), x, 1.0) ** 2 + x))
  )(x)
  assert bool(jnp.all(jnp.isfinite(g)))
  np.testing.assert_allclose(np.asarray(g), 1.0)


# ----------------------------------------------------------------------------
# batches, views, strength sweep
# ----------------------------------------------------------------------------
def test_make_views_layout_and_groups():
  n, V = 5, 3
  x = _vec(0, (n, 20, 2))
  key = jax.random.key(42)
  mv = jax.jit(
    lambda k, x, s, o: A.make_views(
      k, x, num_views=V, strength=s, augment_fn=A.vector_augment, group_offset=o
    )
  )
  views, groups = mv(key, x, 1.0, 10)
  chex.assert_shape(views, (V * n, 20, 2))
  assert groups.dtype == jnp.int32
  np.testing.assert_array_equal(np.asarray(groups), np.tile(np.arange(n), V) + 10)
  vkeys = jax.random.split(key, V)
  for v in range(V):
    ekeys = jax.random.split(vkeys[v], n)
    for i in [0, n - 1]:
      want = jax.jit(A.vector_augment)(ekeys[i], x[i], 1.0)
      np.testing.assert_allclose(
        np.asarray(views[v * n + i]), np.asarray(want), rtol=1e-5, atol=1e-6
      )
  again, _ = mv(key, x, 1.0, 10)
  np.testing.assert_array_equal(np.asarray(again), np.asarray(views))
  other, _ = mv(jax.random.key(43), x, 1.0, 10)
  assert not np.array_equal(np.asarray(other), np.asarray(views))


def _mean_view_cosine(x, fn, strengths, n_keys=16):
  """Mean centred cosine between two views of each source, over ``n_keys`` copies of the batch."""
  xs = jnp.concatenate([x] * n_keys)  # every copy gets its own per-example key in make_views

  @jax.jit
  def cos(key, s):
    v, _ = A.make_views(key, xs, strength=s, augment_fn=fn)
    v = v.reshape(2, xs.shape[0], -1)
    v = v - v.mean(axis=-1, keepdims=True)  # centre each view: remove the brightness offset
    num = jnp.sum(v[0] * v[1], -1)
    den = jnp.linalg.norm(v[0], axis=-1) * jnp.linalg.norm(v[1], axis=-1) + 1e-12
    return jnp.mean(num / den)

  return [float(cos(jax.random.key(123), jnp.float32(s))) for s in strengths]


@pytest.mark.parametrize("kind", ["image", "vector", "signal"])
def test_view_cosine_falls_with_strength(kind):
  rng = np.random.default_rng(0)
  if kind == "image":
    # smooth random images (low-frequency patterns) of 16x16x3
    yy, xx = np.meshgrid(np.linspace(0, 1, 16), np.linspace(0, 1, 16), indexing="ij")
    imgs = [
      0.5
      + 0.4
      * np.sin(2 * np.pi * (rng.uniform(0.5, 2) * yy + rng.uniform(0.5, 2) * xx + rng.uniform()))
      for _ in range(8)
    ]
    x = np.stack([np.stack([im, im[::-1], im.T], -1) for im in imgs]).astype(np.float32)
  elif kind == "vector":
    x = rng.normal(size=(8, 32)).astype(np.float32)
  else:
    x = np.cumsum(rng.normal(size=(8, 40, 1)), axis=1).astype(np.float32)
  c0, c5, c1 = _mean_view_cosine(jnp.asarray(x), A.get_augment_fn(kind), [0.0, 0.5, 1.0])
  assert c0 == pytest.approx(1.0, abs=1e-5)
  assert c0 > c5 + 0.02 and c5 > c1 + 0.02, (c0, c5, c1)


def test_errors():
  with pytest.raises(AssertionError, match=r"random_flip: expected one image \[H, W, C\]"):
    A.random_flip(jax.random.key(0), jnp.zeros((4, 4)), 1.0)
  with pytest.raises(AssertionError, match=r"uint8.*image dtype must be floating point"):
    A.simclr_augment(jax.random.key(0), jnp.zeros((4, 4, 3), jnp.uint8), 1.0)
  with pytest.raises(AssertionError, match="color_jitter: strength must be a scalar"):
    A.color_jitter(jax.random.key(0), jnp.zeros((4, 4, 3)), jnp.ones(2))
  with pytest.raises(AssertionError, match="gaussian_noise: strength must be a scalar"):
    A.gaussian_noise(jax.random.key(0), jnp.zeros((3,)), jnp.ones(2))
  with pytest.raises(AssertionError, match="x dtype must be floating point"):
    A.vector_augment(jax.random.key(0), jnp.zeros((3,), jnp.int32), 1.0)
  with pytest.raises(ValueError, match="C in"):
    A.color_jitter(jax.random.key(0), jnp.zeros((4, 4, 2)), 1.0)
  with pytest.raises(AssertionError, match=r"rank 3 .*a vector \[d\] or a signal \[L, C\]"):
    A.gaussian_noise(jax.random.key(0), jnp.zeros((2, 3, 4)), 1.0)
  with pytest.raises(ValueError, match="num_views"):
    A.make_views(
      jax.random.key(0), jnp.zeros((2, 3)), num_views=0, strength=1.0, augment_fn=A.vector_augment
    )
  with pytest.raises(ValueError, match="batch"):
    A.augment_batch(jax.random.key(0), jnp.zeros((3,)), 1.0, A.vector_augment)
  with pytest.raises(ValueError, match="unknown data kind 'text'"):
    A.get_augment_fn("text")
