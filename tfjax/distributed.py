"""Multi-process (multi-host) runs: initialisation and per-process data slices.

One process per host; each sees its local devices, ``jax.pmap`` spans the
devices of all processes, and collectives (the TransFusion head's
all-gathers, the losses' psums, BatchNorm statistics, gradient pmeans) cross
hosts.  Each process feeds the rows of the global batch that belong to its
devices, and only process 0 writes metrics, plots and results (checkpoints
are written through orbax, which every process calls and which coordinates
the processes itself).

Launch (see docs/training.md, "Scaling out")::

    # every host / process:
    python -m experiments.train --coordinator_address HOST0:1234 \\
        --num_processes N --process_id I ...

or set ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES`` and
``JAX_PROCESS_ID``.  On Cloud TPU pods and SLURM/Open MPI clusters
``jax.distributed.initialize()`` finds them itself: pass
``--num_processes auto``.
"""

from __future__ import annotations

import os
from typing import Optional, Union

import jax
import numpy as np

_ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def initialize(
  coordinator_address: Optional[str] = None,
  num_processes: Union[int, str, None] = None,
  process_id: Optional[int] = None,
) -> bool:
  """Starts ``jax.distributed`` when a multi-process run is asked for.

  Arguments fall back to the environment variables ``JAX_COORDINATOR_ADDRESS``,
  ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``.  ``num_processes="auto"``
  lets JAX detect a TPU pod or a SLURM / Open MPI cluster.  Nothing happens
  for a single process.  Must run before any JAX computation.  CPU
  collectives across processes use gloo (the XLA:CPU default has none).

  Returns True when a multi-process run was initialised.
  """
  coordinator_address = coordinator_address or os.environ.get(_ENV[0])
  if num_processes is None and os.environ.get(_ENV[1]):
    num_processes = os.environ[_ENV[1]]
  if process_id is None and os.environ.get(_ENV[2]):
    process_id = int(os.environ[_ENV[2]])
  if num_processes in (None, 1, "1"):
    return False
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if num_processes == "auto":
    jax.distributed.initialize()
    return True
  num_processes = int(num_processes)
  if coordinator_address is None or process_id is None:
    raise ValueError(
      f"a run of {num_processes} processes needs a coordinator address and "
      "this process's id (flags --coordinator_address/--process_id or "
      f"{_ENV[0]}/{_ENV[2]})"
    )
  if not 0 <= process_id < num_processes:
    raise ValueError(f"process_id must be in [0, {num_processes}), got {process_id}")
  jax.distributed.initialize(
    coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id
  )
  return True


def is_primary() -> bool:
  """True on the process that writes files (process 0)."""
  return jax.process_index() == 0


def process_rows(global_rows: np.ndarray) -> np.ndarray:
  """This process's contiguous share of a global batch (first axis).

  pmap orders the global devices process by process, so process ``p``
  holds rows ``[p·B/P, (p+1)·B/P)``; together the processes see the global
  batch exactly once.
  """
  count, index = jax.process_count(), jax.process_index()
  if len(global_rows) % count:
    raise ValueError(
      f"global batch of {len(global_rows)} is not divisible by the process count {count}"
    )
  share = len(global_rows) // count
  return global_rows[index * share : (index + 1) * share]
