"""The measured side of the limits, in host-side NumPy: samples of the model
(``docs/theory.md`` §0) and the operational definitions of the measured
limits (§5).

The closed forms of the other submodules predict what these samples give:
``experiments.limits`` trains on them and compares the limits it measures
(:func:`measured_max`, :func:`measured_min`) with the predicted ones, and
:func:`empirical_cosines` measures the raw-view cosines that
:func:`tfjax.theory.expected_cosine` predicts.  (``tests/test_theory.py``
keeps its own independent copy of the model as the formulas' reference.)

Example::

    >>> rng = np.random.default_rng(0)
    >>> centres = equicorrelated_centres(rng, 4, 64, 0.0)          # [4, 64]
    >>> x, y = sample_sources(rng, centres, sigma=3.0, n=1000)      # [1000, 64], [1000]
"""

from __future__ import annotations

import math

import numpy as np


def equicorrelated_centres(rng: np.random.Generator, k: int, d: int, rho: float) -> np.ndarray:
  """[k, d] unit vectors with pairwise cosine exactly ρ (needs ρ ≥ −1/(k−1), k ≤ d)."""
  gram = np.full((k, k), rho)
  np.fill_diagonal(gram, 1.0)
  chol = np.linalg.cholesky(gram + 1e-12 * np.eye(k))
  basis, _ = np.linalg.qr(rng.standard_normal((d, k)))
  return (basis @ chol.T).T.astype(np.float32)


def sample_sources(rng: np.random.Generator, centres, sigma, n: int, *, balanced: bool = False):
  """``n`` sources ``μ_y + σu`` [n, d] (u ~ N(0, I/d)) as float32 and their int32
  labels: i.i.d. uniform, or ``balanced`` (``0, 1, …, K−1, 0, 1, …``)."""
  k, d = centres.shape
  y = np.arange(n) % k if balanced else rng.integers(0, k, n)
  x = centres[y] + sigma * rng.standard_normal((n, d)) / np.sqrt(d)
  return x.astype(np.float32), y.astype(np.int32)


def empirical_cosines(rng: np.random.Generator, centres, sigma, s, n: int = 2000):
  """Measured mean cosines of ``n`` positive pairs (two views ``x + s u'`` of one
  source) and of ``n`` other-class pairs of raw views: ``(positive, other)``."""
  k, d = centres.shape
  y = rng.integers(0, k, n)
  y2 = (y + rng.integers(1, k, n)) % k

  def view(base):
    return base + s * rng.standard_normal(base.shape) / np.sqrt(d)

  x = centres[y] + sigma * rng.standard_normal((n, d)) / np.sqrt(d)
  e = centres[y2] + sigma * rng.standard_normal((n, d)) / np.sqrt(d)
  a, b, c = view(x), view(x), view(e)
  cos = lambda p, q: np.sum(p * q, 1) / np.linalg.norm(p, axis=1) / np.linalg.norm(q, axis=1)
  return float(cos(a, b).mean()), float(cos(a, c).mean())


def measured_max(values, accs, tol):
  """ŝ_max: the largest value whose accuracy is within ``tol`` of the best."""
  best = max(accs)
  return max(v for v, a in zip(values, accs) if a >= best - tol)


def measured_min(values, accs, tol):
  """n̂_min: the smallest value from which on every larger swept value is
  within ``tol`` of the best."""
  best = max(accs)
  out = values[-1]
  for v, a in sorted(zip(values, accs), reverse=True):
    if a < best - tol:
      break
    out = v
  return out


def accuracy_tolerance(best_acc, n_test, tol_abs):
  """The tolerance of the measured limits: ``tol_abs``, or 2 binomial standard
  errors of the best accuracy on ``n_test`` test points where that is larger."""
  return max(tol_abs, 2 * math.sqrt(best_acc * (1 - best_acc) / n_test))
