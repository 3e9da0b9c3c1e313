"""Monte-Carlo checks of tfjax.theory (our derivation, docs/theory.md).

Every comparison uses a tolerance built from the simulation's own standard
error, ``K_SE = 4`` standard errors (two-sided false-alarm rate ≈ 6e-5 per
check with a fixed seed, so the seeded run is deterministic), plus, for the
leading-order (large-d) formulas, the explicit bias bound stated in
docs/theory.md §2.5:

* mean cosine, leading order: |bias| ≤ |b₁|/d + R_MEAN/d²   (b₁ computed);
* mean cosine, O(1/d)-corrected: |bias| ≤ R_MEAN/d²;
* variance (std²), leading order: relative |bias| ≤ R_VAR/d;
* fused noise with the actual ReLU adjacency: relative |bias| ≤ R_FUSE.

The constants are measured (not derived) bounds on the next-order terms over
the grid σ ∈ {0, .5, 1, 2}, s ∈ {.1, .5, 1, 2}, ρ ∈ {-.5, 0, .5}, d ∈ {16, 64}
(largest values seen: 0.46 for R_MEAN, 7.3 for R_VAR — positive pairs with
s ≪ σ at d = 16, 5.1 at d = 64 — and 0.027 for R_FUSE); each is used with a
safety factor of about 2 (docs/theory.md §2.5, §3.2). The win probability's
normal-approximation error is bounded by WIN_BIAS (measured 5e-4 at the tested
point with 1.6e5 samples).
"""

import itertools
import math
from fractions import Fraction

import chex
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from tfjax import theory as T

K_SE = 4.0
R_MEAN = 1.0
R_VAR = 16.0
R_FUSE = 0.06
WIN_BIAS = 0.005


# ----------------------------------------------------------------------------
# independent NumPy reference pieces
# ----------------------------------------------------------------------------


def equicorrelated_centres(rng, k, d, rho):
  """k unit vectors in R^d with pairwise cosine exactly rho."""
  gram = np.full((k, k), rho)
  np.fill_diagonal(gram, 1.0)
  chol = np.linalg.cholesky(gram + 1e-12 * np.eye(k))
  basis, _ = np.linalg.qr(rng.standard_normal((d, k)))
  return (basis @ chol.T).T


def noise(rng, shape):
  d = shape[-1]
  return rng.standard_normal(shape) / np.sqrt(d)  # u ~ N(0, I/d), E|u|^2 = 1


def cos_rows(a, b):
  return np.sum(a * b, -1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def relu_adjacency(x, eps=1e-10):
  """TransFusion's adjacency (as tfjax.attention.adjacency) with V = identity:
  cos, relu, zero diag, rownorm."""
  xn = x / np.linalg.norm(x, axis=1, keepdims=True)
  r = np.maximum(xn @ xn.T, 0.0) + eps
  np.fill_diagonal(r, 0.0)
  return r / r.sum(1, keepdims=True)


def simulate_triplets(rng, sigma, s, rho, d, n):
  """Anchor a and positive b (two views of one source), same-class view es,
  other-class view eo."""
  mu = equicorrelated_centres(rng, 2, d, rho)
  x = mu[0] + sigma * noise(rng, (n, d))
  a = x + s * noise(rng, (n, d))
  b = x + s * noise(rng, (n, d))
  es = mu[0] + sigma * noise(rng, (n, d)) + s * noise(rng, (n, d))
  eo = mu[1] + sigma * noise(rng, (n, d)) + s * noise(rng, (n, d))
  return a, b, es, eo


def var_and_se(c):
  """Sample variance and its standard error sqrt((m4 - v^2)/n)."""
  c = c - c.mean()
  v = np.mean(c**2)
  return v, math.sqrt(max(np.mean(c**4) - v * v, 0.0) / len(c))


# ----------------------------------------------------------------------------
# 1. positive coverage
# ----------------------------------------------------------------------------


def brute_force_failure(n, k, lam=Fraction(1)):
  """Enumerate every labelling: category k means "unlabelled" (prob 1-lam)."""
  cats = list(range(k + 1)) if lam < 1 else list(range(k))
  probs = [lam / k] * k + ([1 - lam] if lam < 1 else [])
  fail = Fraction(0)
  for lab in itertools.product(cats, repeat=n):
    counts = [lab.count(c) for c in range(k)]
    if any(c == 1 for c in counts):
      p = Fraction(1)
      for c in lab:
        p *= probs[c]
      fail += p
  return fail


@pytest.mark.parametrize(
  "n,k", [(1, 1), (2, 1), (1, 3), (2, 2), (3, 2), (5, 2), (4, 3), (6, 3), (3, 4), (5, 4)]
)
def test_supervised_failure_matches_enumeration(n, k):
  assert T.failure_probability(n, k) == pytest.approx(float(brute_force_failure(n, k)), abs=1e-15)


@pytest.mark.parametrize("n,k,lam", [(3, 2, 0.5), (5, 2, 0.25), (4, 3, 0.75)])
def test_semi_supervised_failure_matches_enumeration(n, k, lam):
  ref = float(brute_force_failure(n, k, Fraction(lam)))
  got = T.failure_probability(n, k, mode="semi_supervised", views=1, label_fraction=lam)
  assert got == pytest.approx(ref, abs=1e-15)


@pytest.mark.parametrize(
  "mode,n,k,lam",
  [("supervised", 12, 5, 1.0), ("supervised", 40, 10, 1.0), ("semi_supervised", 30, 4, 0.3)],
)
def test_coverage_and_uncovered_fraction_monte_carlo(mode, n, k, lam):
  rng = np.random.default_rng(0)
  trials = 20000
  y = rng.integers(0, k, size=(trials, n))
  labelled = rng.random((trials, n)) < lam if mode == "semi_supervised" else np.ones_like(y, bool)
  yl = np.where(labelled, y, -1)
  counts = np.stack([(yl == c).sum(1) for c in range(k)], 1)  # (trials, k)
  row_count = np.take_along_axis(counts, np.maximum(yl, 0), 1)  # own-class count
  has_pos = labelled & (row_count >= 2)
  covered = np.all(has_pos | ~labelled, axis=1)  # every labelled row has a positive
  p = T.coverage_probability(n, k, mode=mode, views=1, label_fraction=lam)
  se = math.sqrt(p * (1 - p) / trials)
  assert abs(covered.mean() - p) <= K_SE * se + 1e-12
  unc = 1.0 - has_pos.mean(1)  # fraction of rows without positive
  f = T.expected_uncovered_fraction(n, k, mode=mode, views=1, label_fraction=lam)
  assert abs(unc.mean() - f) <= K_SE * unc.std() / math.sqrt(trials)


def test_self_supervised_and_multiview_are_trivial():
  for n in (1, 2, 7):
    assert T.coverage_probability(n, 10, mode="self_supervised", views=2) == 1.0
    assert T.failure_probability(n, 10, mode="semi_supervised", views=2, label_fraction=0.1) == 0.0
    assert T.expected_uncovered_fraction(n, 10, mode="self_supervised", views=3) == 0.0
  assert T.coverage_probability(4, 10, mode="self_supervised", views=1) == 0.0
  assert T.min_batch_size(10, 0.01, mode="self_supervised", views=2) == 1


def test_coverage_edge_cases():
  assert T.coverage_probability(1, 5) == 0.0  # a lone row has no partner
  assert T.expected_uncovered_fraction(1, 5) == 1.0
  assert T.coverage_probability(2, 1) == 1.0  # K = 1: any pair is positive
  assert T.coverage_probability(50, 1) == 1.0
  assert T.min_batch_size(1, 0.1) == 2
  # tiny failure probabilities are computed exactly, no cancellation to 0 or < 0
  f = T.failure_probability(2000, 20)
  assert 0.0 < f < 1e-15 and f == pytest.approx(20 * 2000 / 20 * (19 / 20) ** 1999, rel=1e-3)


def test_coverage_rises_with_n_eventually():
  for k in (2, 3, 10):
    fails = [T.failure_probability(n, k) for n in range(2 * k, 8 * k)]
    assert all(b <= a for a, b in zip(fails, fails[1:]))
  # but not at small n (documented): K = 2, n = 2 -> 3
  assert T.failure_probability(3, 2) > T.failure_probability(2, 2)


@pytest.mark.parametrize(
  "k,delta,mode,lam",
  [
    (2, 0.1, "supervised", 1.0),
    (10, 0.01, "supervised", 1.0),
    (100, 1e-3, "supervised", 1.0),
    (10, 0.05, "semi_supervised", 0.1),
  ],
)
def test_min_batch_size_definition(k, delta, mode, lam):
  n = T.min_batch_size(k, delta, mode=mode, views=1, label_fraction=lam)
  fail = lambda m: T.failure_probability(m, k, mode=mode, views=1, label_fraction=lam)
  assert fail(n - 1) > delta
  assert all(fail(m) <= delta for m in range(n, n + 40))
  # and beyond: Markov bound E[#classes with one needy sample] <= delta for large m
  p = lam / k
  m = 4 * n
  assert k * m * p * (1 - p) ** (m - 1) <= delta


def test_coverage_bad_inputs():
  with pytest.raises(ValueError, match="delta"):
    T.min_batch_size(10, 0.0)
  with pytest.raises(ValueError, match="delta"):
    T.min_batch_size(10, 1.0)
  with pytest.raises(ValueError, match="delta"):
    T.min_batch_size(10, float("nan"))
  with pytest.raises(ValueError, match="num_classes"):
    T.coverage_probability(5, 0)
  with pytest.raises(ValueError, match="n must be"):
    T.coverage_probability(0, 3)
  with pytest.raises(TypeError, match="n must be an int"):
    T.coverage_probability(3.0, 3)
  with pytest.raises(ValueError, match="mode"):
    T.coverage_probability(3, 3, mode="weird")
  with pytest.raises(ValueError, match="label_fraction"):
    T.coverage_probability(3, 3, mode="semi_supervised", views=1, label_fraction=0.0)


# ----------------------------------------------------------------------------
# 2. cosine moments
# ----------------------------------------------------------------------------

PARAMS = [(0.8, 0.6, 0.2), (1.5, 1.5, -0.3), (0.3, 2.0, 0.5), (1.0, 0.0, 0.0)]


@pytest.mark.parametrize("sigma,s,rho", PARAMS)
def test_cosine_mean_and_std_monte_carlo(sigma, s, rho):
  d, n = 256, 20000
  rng = np.random.default_rng(1)
  a, b, es, eo = simulate_triplets(rng, sigma, s, rho, d, n)
  for pair, c in (
    ("positive", cos_rows(a, b)),
    ("same_class", cos_rows(a, es)),
    ("other_class", cos_rows(a, eo)),
  ):
    lead = float(T.expected_cosine(sigma, s, rho, d, pair=pair, bias_correction=False))
    corr = float(T.expected_cosine(sigma, s, rho, d, pair=pair))
    b1_over_d = abs(corr - lead)
    se = c.std() / math.sqrt(n)
    if pair == "positive" and s == 0.0:  # identical views: exactly 1
      assert lead == pytest.approx(1.0, abs=1e-6) and corr == pytest.approx(1.0, abs=1e-6)
      np.testing.assert_allclose(c, 1.0, atol=1e-12)
      assert float(T.cosine_std(sigma, s, rho, d, pair=pair)) <= 1e-6
      continue
    assert abs(c.mean() - lead) <= K_SE * se + b1_over_d + R_MEAN / d**2
    assert abs(c.mean() - corr) <= K_SE * se + R_MEAN / d**2
    v, v_se = var_and_se(c)
    v_th = float(T.cosine_std(sigma, s, rho, d, pair=pair)) ** 2
    assert abs(v - v_th) <= K_SE * v_se + R_VAR / d * v_th


def test_bias_correction_is_needed_at_small_d():
  # at d = 16 the O(1/d) term is much larger than the MC error: the leading-order
  # formula is rejected, the corrected one accepted.
  sigma, s, rho, d, n = 1.5, 1.5, -0.3, 16, 200000
  rng = np.random.default_rng(2)
  a, b, _, _ = simulate_triplets(rng, sigma, s, rho, d, n)
  c = cos_rows(a, b)
  se = c.std() / math.sqrt(n)
  lead = float(T.expected_cosine(sigma, s, rho, d, bias_correction=False))
  corr = float(T.expected_cosine(sigma, s, rho, d))
  assert abs(c.mean() - corr) <= K_SE * se + R_MEAN / d**2
  assert abs(c.mean() - lead) > K_SE * se + R_MEAN / d**2


def test_cosine_closed_forms_and_limits():
  sigma = np.array([0.0, 0.5, 1.0, 2.0])
  s = np.array([0.0, 0.3, 1.0, 3.0])
  rho = 0.25
  q = 1 + sigma**2 + s**2
  lead = lambda pair: np.asarray(T.expected_cosine(sigma, s, rho, pair=pair))
  np.testing.assert_allclose(lead("positive"), (1 + sigma**2) / q, rtol=1e-6)
  np.testing.assert_allclose(lead("same_class"), 1 / q, rtol=1e-6)
  np.testing.assert_allclose(lead("other_class"), rho / q, rtol=1e-6)
  # s = 0: the two views coincide, cos = 1 exactly with zero spread, and the
  # margin fluctuates only through the competitor's cosine
  sg = np.array([0.0, 0.3, 1.0, 2.0])
  np.testing.assert_allclose(np.asarray(T.expected_cosine(sg, 0.0, rho, 256.0)), 1.0, atol=1e-6)
  np.testing.assert_allclose(np.asarray(T.cosine_std(sg, 0.0, rho, 256.0)), 0.0, atol=1e-6)
  np.testing.assert_allclose(
    np.asarray(T.margin_std(sg, 0.0, rho, 256.0, versus="same_class")),
    np.asarray(T.cosine_std(sg, 0.0, rho, 256.0, pair="same_class")),
    rtol=1e-5,
  )
  # d = inf: no fluctuation
  assert np.all(np.asarray(T.cosine_std(sigma, s, rho, jnp.inf)) == 0.0)
  # closed-form leading-order variance (docs §2.3) vs the generic delta-method engine
  d = 100.0
  for pair, cen, gam in (
    ("positive", 1.0, sigma**2),
    ("same_class", 1.0, 0 * sigma),
    ("other_class", rho, 0 * sigma),
  ):
    al = sigma**2 + s**2
    D, N = cen + gam, 1 + al
    v = (
      2 * al
      + 2 * cen * gam
      + al**2
      + gam**2
      - 4 * D / N * (gam + cen * al + al * gam)
      + (D / N) ** 2 * (2 * al + al**2 + 2 * cen * gam + gam**2)
    ) / (d * N**2)
    np.testing.assert_allclose(
      np.asarray(T.cosine_std(sigma, s, rho, d, pair=pair)) ** 2, v, rtol=2e-5, atol=1e-9
    )


def test_cosines_fall_with_s_and_margin_ratio_falls():
  s = np.linspace(0.0, 6.0, 121)
  for pair in ("positive", "same_class"):
    m = np.asarray(T.expected_cosine(0.7, s, 0.3, 512.0, pair=pair))
    assert np.all(np.diff(m) < 0)
  m = np.asarray(T.expected_cosine(0.7, s, 0.3, 512.0, pair="other_class"))
  assert np.all(np.diff(m) < 0)  # rho > 0: also falls toward 0
  for versus in ("same_class", "other_class"):
    ratio = np.asarray(
      T.margin_mean(0.7, s, 0.3, 512.0, versus=versus, bias_correction=False)
    ) / np.asarray(T.margin_std(0.7, s, 0.3, 512.0, versus=versus))
    assert np.all(np.diff(ratio[1:]) < 0)  # used by max_augmentation's bisection


@pytest.mark.parametrize("versus", ["same_class", "other_class"])
def test_margin_and_win_probability_monte_carlo(versus):
  sigma, s, rho, d, n = 0.6, 2.5, 0.3, 256, 20000
  rng = np.random.default_rng(3)
  a, b, es, eo = simulate_triplets(rng, sigma, s, rho, d, n)
  e = es if versus == "same_class" else eo
  mg = cos_rows(a, b) - cos_rows(a, e)
  lead = float(T.margin_mean(sigma, s, rho, d, versus=versus, bias_correction=False))
  corr = float(T.margin_mean(sigma, s, rho, d, versus=versus))
  se = mg.std() / math.sqrt(n)
  # the margin's bias bound is the sum of its two cosines' bounds
  assert abs(mg.mean() - corr) <= K_SE * se + 2 * R_MEAN / d**2
  assert abs(mg.mean() - lead) <= K_SE * se + abs(corr - lead) + 2 * R_MEAN / d**2
  v, v_se = var_and_se(mg)
  v_th = float(T.margin_std(sigma, s, rho, d, versus=versus)) ** 2
  assert abs(v - v_th) <= K_SE * v_se + R_VAR / d * v_th
  # win probability: Gaussian approximation; its error is the normal-approximation
  # (skewness) term, bounded in docs §2.6 by WIN_BIAS at this point.
  w = float(T.win_probability(sigma, s, rho, d, versus=versus))
  p_mc = (mg > 0).mean()
  assert 0.6 < w < 0.999  # a non-trivial operating point
  assert abs(p_mc - w) <= K_SE * math.sqrt(w * (1 - w) / n) + WIN_BIAS


# ----------------------------------------------------------------------------
# 4. maximum augmentation
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("versus,z", [("other_class", 2.0), ("same_class", 1.0)])
def test_max_augmentation_is_the_z_sigma_point_in_simulation(versus, z):
  sigma, rho, d, n = 0.5, 0.2, 256, 20000
  s_star = float(T.max_augmentation(sigma, rho, d, margin_z=z, versus=versus))
  assert s_star > 0
  rng = np.random.default_rng(4)
  a, b, es, eo = simulate_triplets(rng, sigma, s_star, rho, d, n)
  mg = cos_rows(a, b) - cos_rows(a, es if versus == "same_class" else eo)
  # at s*, E[margin] - z std[margin] = 0 up to MC error and the stated bias bounds
  v, v_se = var_and_se(mg)
  sd = math.sqrt(v)
  sd_se = v_se / (2 * sd)
  m_bias = (
    abs(
      float(T.margin_mean(sigma, s_star, rho, d, versus=versus))
      - float(T.margin_mean(sigma, s_star, rho, d, versus=versus, bias_correction=False))
    )
    + 2 * R_MEAN / d**2
  )
  tol = K_SE * (mg.std() / math.sqrt(n) + z * sd_se) + m_bias + z * sd * R_VAR / (2 * d)
  assert abs(mg.mean() - z * sd) <= tol


def test_max_augmentation_properties():
  s_oc = float(T.max_augmentation(0.5, 0.2, 1024.0, versus="other_class"))
  s_sc = float(T.max_augmentation(0.5, 0.2, 1024.0, versus="same_class"))
  assert 0 < s_sc < s_oc  # same-class is harder
  d = np.array([64.0, 256.0, 1024.0, 4096.0])
  sd = np.asarray(T.max_augmentation(0.5, 0.2, d))
  assert np.all(np.diff(sd) > 0)  # more dims, more room
  assert float(T.max_augmentation(0.5, 0.2, 1024.0, margin_z=3.0)) < float(
    T.max_augmentation(0.5, 0.2, 1024.0, margin_z=2.0)
  )
  # criterion already fails at s = 0 (tiny d, big noise): 0; d = inf: inf
  assert float(T.max_augmentation(3.0, 0.0, 2.0, versus="same_class")) == 0.0
  assert float(T.max_augmentation(0.5, 0.2, jnp.inf)) == np.inf
  # the closed-form asymptote approaches the root, relative error O(1/s*^2)
  d_big = 1e6
  exact = float(T.max_augmentation(0.5, 0.0, d_big))
  asym = float(T.max_augmentation_asymptotic(0.5, 0.0, d_big))
  assert abs(asym - exact) / exact <= 4.0 / exact**2
  # the root satisfies its equation
  for versus in ("same_class", "other_class"):
    s_star = float(T.max_augmentation(0.5, 0.2, 1024.0, versus=versus))
    g = float(
      T.margin_mean(0.5, s_star, 0.2, 1024.0, versus=versus, bias_correction=False)
    ) - 2.0 * float(T.margin_std(0.5, s_star, 0.2, 1024.0, versus=versus))
    assert abs(g) < 1e-5


# ----------------------------------------------------------------------------
# 3. noise after one ReLU-fusion layer
# ----------------------------------------------------------------------------


@pytest.mark.parametrize(
  "m,leak,m_o,k,rho",
  [(4, 0.0, 1, 2, 0.0), (16, 0.0, 1, 2, 0.0), (8, 0.3, 12, 4, 0.2), (5, 0.5, 6, 3, -0.5)],
)
def test_fused_noise_law_with_fixed_weights(m, leak, m_o, k, rho):
  sigma, d, trials = 0.9, 64, 4000
  rng = np.random.default_rng(5)
  mu = equicorrelated_centres(rng, k, d, rho)
  per = m_o // (k - 1)
  assert per * (k - 1) == m_o
  ys = np.concatenate([np.zeros(m, int)] + [np.full(per, c) for c in range(1, k)])
  w = np.concatenate([np.full(m, (1 - leak) / m), np.full(m_o, leak / m_o)])
  x = mu[ys][None] + sigma * noise(rng, (trials, len(ys), d))
  f = np.einsum("j,tjd->td", w, x)
  err = np.sum((f - mu[0]) ** 2, -1)
  kwargs = dict(leak=leak, m_other=m_o, rho=rho, num_classes=k) if leak > 0 else {}
  pred = float(T.fused_noise_rms(sigma, m, **kwargs)) ** 2
  assert abs(err.mean() - pred) <= K_SE * err.std() / math.sqrt(trials) + 1e-6 * pred
  if leak == 0:
    assert float(T.fused_noise_rms(sigma, m)) == pytest.approx(sigma / math.sqrt(m), rel=1e-6)


@pytest.mark.parametrize(
  "k,per_class,d,sigma,rho",
  [(4, 16, 512, 1.0, 0.5), (8, 8, 256, 0.7, 0.2), (4, 16, 512, 1.0, -1.0 / 3.0)],
)
def test_fused_noise_with_actual_relu_adjacency(k, per_class, d, sigma, rho):
  rng = np.random.default_rng(6)
  mu = equicorrelated_centres(rng, k, d, rho)
  y = np.repeat(np.arange(k), per_class)
  n = len(y)
  errs, leaks = [], []
  for _ in range(30):
    x = mu[y] + sigma * noise(rng, (n, d))
    a = relu_adjacency(x)
    errs.append(np.sum((a @ x - mu[y]) ** 2, 1))
    leaks.append(np.where(y[:, None] != y[None, :], a, 0.0).sum(1))
  err = np.concatenate(errs)
  leak_mc = np.concatenate(leaks)
  leak, m_s, m_o = T.relu_attention_stats(sigma, rho, d, per_class - 1, n - per_class)
  pred = float(T.fused_noise_rms(sigma, m_s, leak=leak, m_other=m_o, rho=rho, num_classes=k)) ** 2
  # rows of one batch are dependent: standard error over batches, not rows
  batch_means = np.array([e.mean() for e in errs])
  se = batch_means.std(ddof=1) / math.sqrt(len(batch_means))
  assert abs(err.mean() - pred) <= K_SE * se + R_FUSE * pred
  lb = np.array([l.mean() for l in leaks])
  assert (
    abs(leak_mc.mean() - float(leak))
    <= K_SE * lb.std(ddof=1) / math.sqrt(len(lb)) + R_FUSE * float(leak) + 1e-6
  )


def test_fused_noise_shrinks_like_one_over_sqrt_m():
  m = np.array([1.0, 2.0, 4.0, 8.0, 16.0])
  r = np.asarray(T.fused_noise_rms(1.3, m))
  np.testing.assert_allclose(r, 1.3 / np.sqrt(m), rtol=1e-6)
  with pytest.raises(ValueError, match="m_other"):
    T.fused_noise_rms(1.0, 4.0, leak=0.2)
  with pytest.raises(ValueError, match="num_classes"):
    T.fused_noise_rms(1.0, 4.0, leak=0.2, m_other=3.0, num_classes=1)
  with pytest.raises(ValueError, match="rho"):
    T.fused_noise_rms(1.0, 4.0, leak=0.2, m_other=3.0, num_classes=3, rho=-0.6)
  with pytest.raises(ValueError, match="leak"):
    T.fused_noise_rms(1.0, 4.0, leak=1.2, m_other=3.0, num_classes=3)


# ----------------------------------------------------------------------------
# inputs, NaN-freedom, jit
# ----------------------------------------------------------------------------


def test_bad_inputs_raise():
  with pytest.raises(ValueError, match="sigma"):
    T.expected_cosine(-0.1, 0.5)
  with pytest.raises(ValueError, match="rho"):
    T.expected_cosine(0.1, 0.5, 1.5)
  with pytest.raises(ValueError, match="d must be"):
    T.cosine_std(0.1, 0.5, 0.0, 0.0)
  with pytest.raises(ValueError, match="s must be"):
    T.margin_std(0.1, np.array([0.5, -1.0]), 0.0, 10.0)
  with pytest.raises(ValueError, match="pair"):
    T.expected_cosine(0.1, 0.5, pair="negative")
  with pytest.raises(ValueError, match="versus"):
    T.max_augmentation(0.1, 0.0, 100.0, versus="both")
  with pytest.raises(ValueError, match="margin_z"):
    T.max_augmentation(0.1, 0.0, 100.0, margin_z=0.0)
  with pytest.raises(ValueError, match="sigma"):
    T.expected_cosine(float("nan"), 0.5)


def test_never_nan_at_edges():
  sig = np.array([0.0, 0.0, 1e-6, 3.0])
  s = np.array([0.0, 1e3, 0.0, 0.0])
  for rho in (-1.0, 0.0, 1.0):
    for d in (1.0, 1e6, np.inf):
      for f in (T.expected_cosine, T.cosine_std):
        assert np.all(np.isfinite(np.asarray(f(sig, s, rho, d))))
      for f in (T.margin_mean, T.margin_std, T.win_probability):
        assert np.all(np.isfinite(np.asarray(f(sig, s, rho, d))))
      leak, ms, mo = T.relu_attention_stats(sig, rho, d, 3, 5, s=s)
      assert np.all(np.isfinite(np.asarray(leak))) and np.all(np.asarray(ms) > 0)
  assert np.all(np.isfinite(np.asarray(T.max_augmentation(sig, 0.0, 16.0))))


class JitTest(chex.TestCase):
  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(("pos", "positive"), ("other", "other_class"))
  def test_expected_cosine_jit(self, pair):
    sigma = jnp.array([[0.2], [1.0]])
    s = jnp.array([0.0, 0.5, 2.0])
    f = self.variant(
      lambda a, b: (
        T.expected_cosine(a, b, 0.3, 64.0, pair=pair),
        T.cosine_std(a, b, 0.3, 64.0, pair=pair),
      )
    )
    m, sd = f(sigma, s)
    chex.assert_shape(m, (2, 3))
    chex.assert_shape(sd, (2, 3))
    ref = T.expected_cosine(np.asarray(sigma), np.asarray(s), 0.3, 64.0, pair=pair)
    np.testing.assert_allclose(m, ref, rtol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  def test_max_augmentation_jit(self):
    f = self.variant(lambda sg, d: T.max_augmentation(sg, 0.2, d))
    out = f(jnp.array([0.3, 0.5, 1.0]), jnp.array([256.0, 1024.0, 1024.0]))
    chex.assert_shape(out, (3,))
    ref = [
      float(T.max_augmentation(a, 0.2, b)) for a, b in [(0.3, 256.0), (0.5, 1024.0), (1.0, 1024.0)]
    ]
    np.testing.assert_allclose(out, ref, rtol=1e-5)
