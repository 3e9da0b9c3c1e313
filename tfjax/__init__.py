"""tfjax: TransFusion and CLOA contrastive learning in JAX/Flax.

The bottom layer is pure math on arrays:

* :func:`adjacency` / :func:`relu_attention` — ReLU attention across the batch;
* :func:`target_affinity` / :func:`jsd_loss` — TransFusion's target and loss.

Models (:class:`TransFusionHead`, the paper's v2 :class:`DeepFusionHead`,
backbones), losses, data, training and
evaluation live in submodules (``tfjax.models``, ``tfjax.losses``,
``tfjax.data``, ``tfjax.train``, ``tfjax.evaluation``).  :func:`load_run`
loads a finished run from its work directory (``tfjax.loading``) as a
:class:`Run` (``tfjax.run``).
"""

from tfjax.affinity import jsd_loss, positive_mask, row_jsd, target_affinity, valid_rows
from tfjax.attention import adjacency, cosine_similarity, relu_attention
from tfjax.normalize import l2_normalize
from tfjax.backbones import CNN1D, MLP, ResNet18, SmallCNN, get_backbone
from tfjax.blockwise import blockwise_attention, blockwise_jsd_loss
from tfjax.fusion_blocks import AdjacencyBlock, FusionBlock
from tfjax.models import TransFusionHead
from tfjax.deep_fusion import DeepFusionBlock, DeepFusionHead
from tfjax import diagnostics, losses, theory  # noqa: E402  (pure JAX; no TensorFlow)
from tfjax import builtin_methods  # noqa: F401  (registers the built-in methods)

__version__ = "0.1.0"

__all__ = [
  "adjacency",
  "relu_attention",
  "cosine_similarity",
  "l2_normalize",
  "target_affinity",
  "positive_mask",
  "jsd_loss",
  "row_jsd",
  "valid_rows",
  "blockwise_attention",
  "blockwise_jsd_loss",
  "FusionBlock",
  "AdjacencyBlock",
  "TransFusionHead",
  "DeepFusionBlock",
  "DeepFusionHead",
  "MLP",
  "CNN1D",
  "SmallCNN",
  "ResNet18",
  "get_backbone",
  "losses",
  "diagnostics",
  "theory",
  "load_run",
  "Run",
]

# Loaded on first use: they import orbax, optax and the data registry, which
# ``import tfjax`` does not.
_LAZY = {"load_run": "tfjax.loading", "Run": "tfjax.run"}


def __getattr__(name):
  if name in _LAZY:
    import importlib

    return getattr(importlib.import_module(_LAZY[name]), name)
  raise AttributeError(f"module 'tfjax' has no attribute {name!r}")
