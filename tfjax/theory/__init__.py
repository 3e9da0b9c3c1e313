"""Closed-form predictions for TransFusion's two limits (batch size, augmentation).

**This is our derivation under the model below, not the paper's.** The
TransFusion paper states limits on the maximum augmentation level and the
minimum batch size, but its formulas were not available to this project; the
model, the formulas and their approximations are ours. The step-by-step
derivation is in ``docs/theory.md``; ``tests/test_theory.py`` checks every
formula against a seeded Monte-Carlo simulation.

Model (ours; ``docs/theory.md`` §0):

* ``K`` balanced classes; unit class centres ``μ_k ∈ R^d`` with
  ``μ_j·μ_k = ρ`` for ``j ≠ k`` exactly (an equicorrelated set, which exists for
  ``-1/(K-1) ≤ ρ ≤ 1``).
* A source sample ``x = μ_y + σ u`` with ``u ~ N(0, I/d)`` (so ``E‖u‖² = 1``).
* An augmented view ``v = x + s u'`` with fresh ``u' ~ N(0, I/d)``. Every row of a
  batch is such a view (both views of a positive pair are augmented).
* Rows are compared as TransFusion's adjacency does
  (:func:`tfjax.attention.adjacency`): cosine similarity, then ReLU, zero
  diagonal, row normalisation.

Four groups of functions, one submodule each (all re-exported here, so
``tfjax.theory.max_augmentation`` etc. work):

1. :mod:`tfjax.theory.coverage` — positive coverage vs batch size (exact,
   host-side Python/NumPy on integers): :func:`coverage_probability`,
   :func:`failure_probability`, :func:`expected_uncovered_fraction`,
   :func:`min_batch_size`.
2. :mod:`tfjax.theory.cosines` — cosine statistics and the augmentation
   limit (jit-able ``jnp``, broadcasting over array arguments):
   :func:`expected_cosine`, :func:`cosine_std`, :func:`margin_mean`,
   :func:`margin_std`, :func:`win_probability`, :func:`max_augmentation`,
   :func:`max_augmentation_asymptotic`.
3. :mod:`tfjax.theory.fusion` — noise after one ReLU-fusion layer
   (jit-able ``jnp``): :func:`fused_noise_rms`, :func:`relu_attention_stats`.
4. :mod:`tfjax.theory.empirical` — samples of the model and the measured
   limits of §5 (host-side NumPy): :func:`equicorrelated_centres`,
   :func:`sample_sources`, :func:`empirical_cosines`, :func:`measured_max`,
   :func:`measured_min`, :func:`accuracy_tolerance`.
"""

from tfjax.theory.cosines import (
  cosine_std,
  expected_cosine,
  margin_mean,
  margin_std,
  max_augmentation,
  max_augmentation_asymptotic,
  win_probability,
)
from tfjax.theory.coverage import (
  coverage_probability,
  expected_uncovered_fraction,
  failure_probability,
  min_batch_size,
)
from tfjax.theory.empirical import (
  accuracy_tolerance,
  empirical_cosines,
  equicorrelated_centres,
  measured_max,
  measured_min,
  sample_sources,
)
from tfjax.theory.fusion import fused_noise_rms, relu_attention_stats

__all__ = [
  "coverage_probability",
  "failure_probability",
  "expected_uncovered_fraction",
  "min_batch_size",
  "expected_cosine",
  "cosine_std",
  "margin_mean",
  "margin_std",
  "win_probability",
  "max_augmentation",
  "max_augmentation_asymptotic",
  "fused_noise_rms",
  "relu_attention_stats",
  "equicorrelated_centres",
  "sample_sources",
  "empirical_cosines",
  "measured_max",
  "measured_min",
  "accuracy_tolerance",
]
