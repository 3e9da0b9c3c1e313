"""The built-in methods, each registered with its recipes.

TransFusion's JSD (``jsd``), SupCon, SimCLR's InfoNCE (``info_nce``), DCL,
Barlow Twins, VICReg and Deep Fusion's NT-Xent (``deep_fusion``): each is a
thin adapter from a :class:`tfjax.methods.LossInputs` (embeddings ``z``
[V·n, D], view-major) to its loss in :mod:`tfjax.losses` (or the network
head's ``loss``), returning a scalar, and one :func:`tfjax.methods.register`
call with the recipes chosen on validation data (docs/recipes.md,
docs/deep_fusion.md).  ``import tfjax`` imports this module, so the registry
holds these methods before any other module reads it.
"""

from __future__ import annotations

import jax

from tfjax import losses
from tfjax.methods import LossInputs, Method, Recipe, register

Array = jax.Array


def _jsd(inputs: LossInputs) -> Array:
  return inputs.head_loss(inputs.z, inputs.groups, inputs.labels)


def _supcon(inputs: LossInputs, *, temperature) -> Array:
  return losses.supcon(
    inputs.z, inputs.positive_ids(), temperature=temperature, axis_name=inputs.axis_name
  )


def _info_nce(inputs: LossInputs, *, temperature) -> Array:
  z1, z2 = inputs.views()
  return losses.info_nce(z1, z2, temperature=temperature, axis_name=inputs.axis_name)


def _dcl(inputs: LossInputs, *, temperature) -> Array:
  z1, z2 = inputs.views()
  return losses.dcl(z1, z2, temperature=temperature, axis_name=inputs.axis_name)


def _barlow_twins(inputs: LossInputs, *, lambda_offdiag) -> Array:
  z1, z2 = inputs.views()
  return losses.barlow_twins(z1, z2, lambda_offdiag=lambda_offdiag, axis_name=inputs.axis_name)


def _vicreg(inputs: LossInputs) -> Array:
  z1, z2 = inputs.views()
  return losses.vicreg(z1, z2, axis_name=inputs.axis_name)


# Each recipe was chosen on MNIST-1D's validation split (docs/recipes.md);
# fields a recipe leaves out take tfjax.methods.FALLBACK.
_SIGNAL_SSL = {"augment": "signal", "augment_strength": 0.5}

register(
  Method(
    "jsd",
    "TransFusion (JSD)",
    _jsd,
    accepts_labels=True,
    uses_head=True,
    recipes=(
      Recipe(
        True,
        "signal",
        {
          "augment": "",
          "augment_strength": 0.1,
          "learning_rate": 2e-3,
          "head.num_layers": 1,
          "head.final_projection": "learned",
          "head.activation": "relu",
          "num_steps": 800,
        },
        "docs/recipes.md, first sweep",
      ),
      # The truncated block compares the head's outputs directly: learned Q/K
      # die (uniform rows) in every self-supervised setting of the sweeps.
      Recipe(
        False,
        "signal",
        {
          **_SIGNAL_SSL,
          "learning_rate": 4e-3,
          "head.num_layers": 1,
          "head.final_projection": "none",
          "head.activation": "relu",
          "num_steps": 1600,
        },
        "docs/recipes.md, third sweep",
      ),
    ),
  )
)
register(
  Method(
    "supcon",
    "SupCon",
    _supcon,
    accepts_labels=True,
    options={"temperature": 0.1},
    recipes=(
      Recipe(
        True,
        "signal",
        {
          "augment": "",
          "augment_strength": 0.1,
          "learning_rate": 4e-3,
          "temperature": 0.1,
          "num_steps": 800,
        },
        "docs/recipes.md, first sweep",
      ),
    ),
  )
)
register(
  Method(
    "info_nce",
    "SimCLR (InfoNCE)",
    _info_nce,
    num_views=2,
    options={"temperature": 0.1},
    recipes=(
      Recipe(
        False,
        "signal",
        {**_SIGNAL_SSL, "learning_rate": 4e-3, "temperature": 0.2, "num_steps": 1600},
        "docs/recipes.md, second sweep",
      ),
    ),
  )
)
register(
  Method(
    "dcl",
    "DCL",
    _dcl,
    num_views=2,
    options={"temperature": 0.1},
    recipes=(
      Recipe(
        False,
        "signal",
        {**_SIGNAL_SSL, "learning_rate": 4e-3, "temperature": 0.1, "num_steps": 800},
        "docs/recipes.md, fourth sweep",
      ),
    ),
  )
)
register(
  Method(
    "barlow_twins",
    "Barlow Twins",
    _barlow_twins,
    num_views=2,
    options={"lambda_offdiag": 5e-3},
    recipes=(
      Recipe(
        False,
        "signal",
        {**_SIGNAL_SSL, "learning_rate": 4e-3, "num_steps": 800},
        "docs/recipes.md, fourth sweep",
      ),
    ),
  )
)
register(
  Method(
    "vicreg",
    "VICReg",
    _vicreg,
    num_views=2,
    recipes=(
      Recipe(
        False,
        "signal",
        {**_SIGNAL_SSL, "learning_rate": 4e-3, "num_steps": 800},
        "docs/recipes.md, fourth sweep",
      ),
    ),
  )
)


def _deep_fusion(inputs: LossInputs, *, temperature) -> Array:
  # NT-Xent of the Deep Fusion head's output (tfjax.deep_fusion).
  return inputs.head_loss(inputs.z, inputs.groups, None, temperature=temperature)


# Deep Fusion's recipe: the recipe sweep's coordinate search on MNIST-1D's
# validation split, as for SimCLR (docs/deep_fusion.md).
register(
  Method(
    "deep_fusion",
    "Deep Fusion (NT-Xent)",
    _deep_fusion,
    num_views=2,
    uses_head=True,
    options={"temperature": 0.1},
    recipes=(
      Recipe(
        False,
        "signal",
        {**_SIGNAL_SSL, "learning_rate": 1e-3, "temperature": 0.5, "num_steps": 1600},
        "docs/deep_fusion.md, recipe",
      ),
    ),
  )
)
