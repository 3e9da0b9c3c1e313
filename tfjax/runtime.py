"""Process-wide XLA settings, made before JAX starts its backend.

XLA's CPU compiler schedules for concurrency by default
(``--xla_cpu_enable_concurrency_optimized_scheduler``): it starts independent
work early so that the runtime can overlap it, and the buffers of that work
stay alive meanwhile.  For a TransFusion training step this is costly: every
fusion block's backward allocates its accumulators long before it runs.  On
this project's 2-core CPU, turning it off (XLA's memory-minimising list
scheduler instead) cut the compiled plan of the blockwise training step at
n = 16384, width 512, L = 5 from 2.48 GiB to 1.52 GiB, and made the step at
n = 2048 faster too (1.92 s → 1.45 s, measured back to back;
docs/benchmark/README.md).

XLA reads this option once per process from ``XLA_FLAGS``; with JAX 0.10 a
per-compile ``compiler_options={...}`` is accepted but does not change the
schedule (we checked), so it has to be set before JAX initialises a backend.
The experiment scripts call :func:`use_low_memory_cpu_scheduler` first thing
(our choice; ``--xla_cpu_scheduler concurrency`` keeps XLA's default).  GPU and
TPU compilers ignore the option.
"""

from __future__ import annotations

import os

CPU_SCHEDULER_OPTION = "xla_cpu_enable_concurrency_optimized_scheduler"
CPU_SCHEDULERS = ("memory", "concurrency")


def _backends_initialized() -> bool:
  try:  # private, but the only way to know whether XLA_FLAGS was read yet
    from jax._src import xla_bridge

    return bool(xla_bridge.backends_are_initialized())
  except (ImportError, AttributeError):
    return False


def _current_setting(flags: str):
  """The option's value in an XLA_FLAGS string (the last one wins), or None."""
  value = None
  for token in flags.split():
    name, _, rhs = token.lstrip("-").partition("=")
    if name == CPU_SCHEDULER_OPTION:
      value = rhs.lower() not in ("false", "0")
  return value


def use_low_memory_cpu_scheduler(scheduler: str = "memory") -> bool:
  """Chooses XLA's CPU scheduler for this process -> True if it is "memory".

  ``scheduler="memory"`` appends
  ``--xla_cpu_enable_concurrency_optimized_scheduler=false`` to ``XLA_FLAGS``;
  ``"concurrency"`` appends ``=true`` (XLA's default).  A value the user
  already put in ``XLA_FLAGS`` is left alone and reported.

  Raises:
    ValueError: unknown ``scheduler``.
    RuntimeError: a JAX backend is already initialised with another setting
      (XLA has read its flags; call this before the first JAX computation).

  Example::

      >>> from tfjax.runtime import use_low_memory_cpu_scheduler
      >>> use_low_memory_cpu_scheduler()     # before any jax.numpy call
      True
  """
  if scheduler not in CPU_SCHEDULERS:
    raise ValueError(f"unknown CPU scheduler {scheduler!r}; choose one of {CPU_SCHEDULERS}")
  flags = os.environ.get("XLA_FLAGS", "")
  current = _current_setting(flags)
  if current is not None:  # the user's choice wins
    return not current
  want_concurrency = scheduler == "concurrency"
  if _backends_initialized():
    if want_concurrency:  # XLA's default is in effect
      return False
    raise RuntimeError(
      "use_low_memory_cpu_scheduler() must run before JAX initialises its "
      "backend (XLA has already read XLA_FLAGS); call it before the first "
      "JAX computation, or set XLA_FLAGS="
      f"--{CPU_SCHEDULER_OPTION}=false in the environment"
    )
  os.environ["XLA_FLAGS"] = (
    f"{flags} --{CPU_SCHEDULER_OPTION}={'true' if want_concurrency else 'false'}"
  ).strip()
  return not want_concurrency
