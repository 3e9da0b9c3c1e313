"""Test set-up shared by the whole suite.

Four fake CPU devices let the pmap tests run on a laptop or CI; XLA reads the
flag once, when JAX initialises, so it must be set before anything imports jax.
"""

import os

os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Never let a test wait on a download: TFDS must fail fast offline.
os.environ.setdefault(
  "TFDS_DATA_DIR", os.path.join(os.path.dirname(__file__), "..", ".tfds_test_data")
)

# XLA's compiled programs kept on disk and shared by the suite's processes
# (subprocesses inherit these variables): library runs free their programs
# after each run, and many tests compile the same small ones again.
os.environ.setdefault(
  "JAX_COMPILATION_CACHE_DIR", os.path.join(os.path.dirname(__file__), "..", ".jax_test_cache")
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", False)


import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _free_compiled_programs_after_each_module():
  # The suite compiles thousands of programs in one process; on CPU each
  # holds memory mappings and Linux allows 65,530 per process. Library runs
  # free theirs (tfjax.evaluation.release_compiled_programs); tests that jit
  # directly are freed here, module by module.
  yield
  jax.clear_caches()
