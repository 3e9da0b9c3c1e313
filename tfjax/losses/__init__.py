"""Contrastive losses of the CLOA paper and its Orthonormal Anchor Regression.

Every loss is a pure, jit-able function of a batch of embeddings that returns a
scalar.  Each takes an optional ``axis_name``: inside ``jax.pmap`` (or any
mapped axis with collectives) each device passes its *local* rows, the
negatives and batch statistics are taken over the **global** batch
(``jax.lax.all_gather(..., tiled=True)`` / ``jax.lax.psum``), the "self" and
"positive" entries sit at global indices (``axis_index · n_local``), and the
returned value is the global loss, the same scalar on every device.

Gradients under pmap (JAX semantics, not a choice of ours): ``jax.grad`` of a
pmapped function differentiates the *sum over devices* of the per-device
outputs.  Every device returns the same global loss ``L``, so the gradient
w.r.t. a device's local rows is ``num_devices · ∂L/∂rows``, and for replicated
parameters ``jax.lax.pmean(grads, axis_name)`` is exactly the single-device
gradient of ``L`` (the tests check both).

Losses (the base losses CLOA adds its anchor regression to, and CLOA's
own; our choices are listed in ``docs/design.md``, section "Losses"), one
submodule per family, all re-exported here (``from tfjax.losses import
info_nce`` etc.):

* :mod:`tfjax.losses.contrastive` —
  :func:`info_nce` (NT-Xent of SimCLR, Chen et al. 2020),
  :func:`supcon` (supervised contrastive, "L_out", Khosla et al. 2020),
  :func:`dcl` (decoupled contrastive, Yeh et al. 2022).
* :mod:`tfjax.losses.redundancy` —
  :func:`barlow_twins` (Zbontar et al. 2021), :func:`vicreg` (Bardes et al.
  2022).
* :mod:`tfjax.losses.oar` — :func:`orthonormal_anchors`, :func:`oar_loss`,
  :func:`with_oar`: CLOA's Orthonormal Anchor Regression.
* :func:`jsd_loss` — TransFusion's JSD loss (re-exported from
  :mod:`tfjax.affinity`).

Cosine-based losses L2-normalise the embeddings inside, scale-safely
(:func:`tfjax.normalize.l2_normalize`: each row divided by its largest
|entry| before squaring, norms summed in float32 or wider), so they are the
same for ``z`` and ``c·z`` (any c > 0 that keeps each non-zero row's largest
|entry| between :func:`tfjax.normalize.smallest_row_max`, 9.9e-32, and
:func:`tfjax.normalize.largest_row_max`, 8.5e37; ValueError outside) and finite for float16/bfloat16
inputs; a zero row gives a finite loss and a finite (zero) gradient for that
row.

Bad inputs never give a silently wrong number: a NaN or inf anywhere in an
input makes the loss and its gradient NaN (nothing masks it, not even a row
that is otherwise left out of a mean), and bad hyper-parameters (a
temperature, eps or weight out of range or not finite, a batch too small for
a statistic) raise ValueError when they are concrete.

Each loss validates its inputs in Python, then runs one jit-compiled body
(``axis_name`` static), so eager calls from a notebook are fast; inside a
caller's jit/pmap that body is simply inlined.

Input checks: ranks, dtypes and shapes are asserted with ``chex`` on static
shapes before any compute (a failure raises ``AssertionError`` naming the
argument and the shapes); bad values (temperature, label range, widths that
do not match) raise ``ValueError``.  Label *values* can only be checked when
they are concrete (an eager call); under ``jit``/``pmap`` they are traced,
and out-of-range labels are then masked out as documented per function
(never clipped onto a wrong class).
"""

from tfjax.affinity import jsd_loss
from tfjax.losses.contrastive import dcl, info_nce, supcon
from tfjax.losses.oar import oar_loss, orthonormal_anchors, with_oar
from tfjax.losses.redundancy import barlow_twins, vicreg

__all__ = [
  "info_nce",
  "supcon",
  "dcl",
  "barlow_twins",
  "vicreg",
  "jsd_loss",
  "orthonormal_anchors",
  "oar_loss",
  "with_oar",
]
