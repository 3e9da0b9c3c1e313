"""What every augmentation checks: its strength is a scalar."""

from __future__ import annotations

import chex
import jax.numpy as jnp


def check_strength(strength, what: str):
  s = jnp.asarray(strength)
  chex.assert_rank(s, 0, custom_message=f"{what}: strength must be a scalar")
  return s.astype(jnp.float32)
