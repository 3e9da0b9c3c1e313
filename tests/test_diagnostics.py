"""tfjax.diagnostics against float64 NumPy (np.linalg.svd) and at known points."""

import chex
import jax
import numpy as np
import pytest
from absl.testing import absltest

from tfjax import diagnostics as dg, plots


def _unit(z):
  z = np.asarray(z, np.float64)
  return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)


def np_variance(z):
  u = _unit(z)
  # Σ_j Var_j of the unit rows, computed directly (not via 1 − ‖mean‖²).
  return float(np.sum(np.var(u, axis=0)))


def np_rank(z, energy):
  s = np.linalg.svd(_unit(z), compute_uv=False)
  e = s**2
  frac = np.cumsum(e) / e.sum()
  return int(np.argmax(frac >= energy - 1e-9) + 1)


class DiagnosticsVsNumpyTest(chex.TestCase):
  @chex.variants(with_jit=True, without_jit=True)
  def test_random(self):
    rng = np.random.default_rng(0)
    # Low-rank-ish: a spectrum with a clear knee, so the 90% rank is robust.
    z = (
      rng.normal(size=(12, 3)) @ rng.normal(size=(3, 6)) + 0.05 * rng.normal(size=(12, 6))
    ).astype(np.float32)
    y = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, -1, 1], np.int32)
    k = 4  # class 3 has no sample
    fn = self.variant(
      lambda z, y: (
        dg.embedding_variance(z),
        dg.singular_values(z),
        dg.singular_values(z, normalize=False),
        dg.rank_at_energy(z, 0.9),
        dg.per_class_variance(z, y, k),
        dg.per_class_rank(z, y, k, 0.9),
      )
    )
    var, s, s_raw, r, pcv, pcr = fn(z, y)
    chex.assert_shape([s, s_raw], (6,))
    chex.assert_shape([pcv, pcr], (k,))
    np.testing.assert_allclose(var, np_variance(z), atol=1e-6)
    np.testing.assert_allclose(s, np.linalg.svd(_unit(z), compute_uv=False), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
      s_raw, np.linalg.svd(z.astype(np.float64), compute_uv=False), rtol=1e-5, atol=1e-5
    )
    self.assertEqual(int(r), np_rank(z, 0.9))
    for c in range(3):
      np.testing.assert_allclose(pcv[c], np_variance(z[y == c]), atol=1e-6)
      self.assertEqual(int(pcr[c]), np_rank(z[y == c], 0.9))
    # The empty class: 0, not NaN.
    self.assertEqual(float(pcv[3]), 0.0)
    self.assertEqual(int(pcr[3]), 0)


def test_collapsed_embeddings():
  rng = np.random.default_rng(1)
  v = rng.normal(size=5)
  scales = rng.uniform(0.5, 3.0, size=(8, 1))
  equal = (scales * v).astype(np.float32)  # all the same direction
  signs = np.where(np.arange(8) % 2 == 0, 1.0, -1.0)[:, None]
  line = (signs * scales * v).astype(np.float32)  # ±z*, rank 1
  assert float(dg.embedding_variance(equal)) == pytest.approx(0.0, abs=1e-6)
  assert int(dg.rank_at_energy(equal)) == 1
  assert int(dg.rank_at_energy(line)) == 1
  # Half +z*, half −z*: mean 0, so the variance alone does not see the line.
  assert float(dg.embedding_variance(line)) == pytest.approx(1.0, abs=1e-6)
  s = np.asarray(dg.singular_values(equal))
  np.testing.assert_allclose(s[0], np.sqrt(8), rtol=1e-6)
  assert np.all(s[1:] < 1e-5)


def test_orthonormal_embeddings():
  n = 20
  q, _ = np.linalg.qr(np.random.default_rng(2).normal(size=(32, n)))
  z = (q.T * 4.0).astype(np.float32)  # n orthogonal rows
  assert float(dg.embedding_variance(z)) == pytest.approx(1 - 1 / n, abs=1e-6)
  np.testing.assert_allclose(dg.singular_values(z), np.ones(n), atol=1e-5)
  # Equal singular values: r/n ≥ energy.  19/20 = 0.95 exactly.
  assert int(dg.rank_at_energy(z, 0.95)) == 19
  assert int(dg.rank_at_energy(z, 0.5)) == 10
  assert int(dg.rank_at_energy(z, 1.0)) == 20


def test_zero_rows_and_zero_matrix_no_nan():
  z = np.zeros((4, 3), np.float32)
  assert float(dg.embedding_variance(z)) == 0.0
  # One zero row among unit rows: Σ_j Var_j of the normalised rows.
  part = np.eye(4, 3, dtype=np.float32) * 2.0  # last row is zero
  np.testing.assert_allclose(dg.embedding_variance(part), np_variance(part), atol=1e-6)
  assert int(dg.rank_at_energy(z)) == 0
  g = jax.grad(lambda z: dg.embedding_variance(z))(z)
  assert np.all(np.isfinite(g))


def test_class_ordered_affinity():
  rng = np.random.default_rng(3)
  z = rng.normal(size=(7, 4)).astype(np.float32)
  y = np.array([2, 0, 1, 0, 2, 1, 0], np.int32)
  c, ys = dg.class_ordered_affinity(z, y)
  chex.assert_shape(c, (7, 7))
  order = np.array([1, 3, 6, 2, 5, 0, 4])  # stable by class
  np.testing.assert_array_equal(ys, y[order])
  u = _unit(z)[order]
  np.testing.assert_allclose(c, u @ u.T, atol=1e-6)


def test_pngs_are_written(tmp_path):
  rng = np.random.default_rng(4)
  z = rng.normal(size=(10, 6)).astype(np.float32)
  y = rng.integers(0, 3, size=10).astype(np.int32)
  c, ys = dg.class_ordered_affinity(z, y)
  p1 = plots.plot_affinity_heatmap(c, ys, tmp_path / "sub" / "heat.png", title="test")
  p2 = plots.plot_spectrum(dg.singular_values(z), tmp_path / "spec.png")
  p3 = plots.plot_spectrum(
    {"random": dg.singular_values(z), "collapsed": np.array([3.0, 0.0, 0.0])},
    tmp_path / "spec2.png",
    normalize=False,
  )
  for p in (p1, p2, p3):
    with open(p, "rb") as f:
      head = f.read(8)
    assert head == b"\x89PNG\r\n\x1a\n", p
  assert p1 == str(tmp_path / "sub" / "heat.png")


def test_summary():
  rng = np.random.default_rng(5)
  z = rng.normal(size=(9, 5)).astype(np.float32)
  y = np.array([0, 0, 0, 1, 1, 1, 2, 2, -1], np.int32)
  out = dg.summary(z, y, num_classes=4)
  assert all(isinstance(v, float) for v in out.values())
  assert out["variance"] == pytest.approx(np_variance(z), abs=1e-6)
  assert out["rank95"] == np_rank(z, 0.95)
  want_var = [np_variance(z[y == c]) for c in range(3)]  # class 3: absent
  assert out["class_variance_mean"] == pytest.approx(np.mean(want_var), abs=1e-6)
  assert out["class_variance_min"] == pytest.approx(np.min(want_var), abs=1e-6)
  assert out["class_rank95_mean"] == pytest.approx(
    np.mean([np_rank(z[y == c], 0.95) for c in range(3)])
  )
  assert set(dg.summary(z)) == {"variance", "rank95", "top1_energy"}


def test_errors():
  z = np.ones((4, 3), np.float32)
  with pytest.raises(AssertionError, match=r"rank 1 .*z must be a 2-D array"):
    dg.embedding_variance(z[0])
  with pytest.raises(AssertionError, match=r"int32.*z must be floating point"):
    dg.singular_values(z.astype(np.int32))
  with pytest.raises(ValueError, match="non-empty"):
    dg.embedding_variance(z[:0])
  with pytest.raises(ValueError, match="energy"):
    dg.rank_at_energy(z, 1.5)
  with pytest.raises(AssertionError, match="labels must be integers"):
    dg.per_class_variance(z, np.zeros(4, np.float32), 2)
  with pytest.raises(AssertionError, match=r"labels must have shape \(4,\) to match z"):
    dg.per_class_rank(z, np.zeros(3, np.int32), 2)
  with pytest.raises(ValueError, match="num_classes"):
    dg.per_class_variance(z, np.zeros(4, np.int32), 0)
  with pytest.raises(ValueError, match="square"):
    plots.plot_affinity_heatmap(np.ones((2, 3)), np.zeros(2), "never.png")


if __name__ == "__main__":
  absltest.main()
