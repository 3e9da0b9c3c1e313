"""Test set-up shared by the whole suite.

Four fake CPU devices let the pmap tests run on a laptop or CI; XLA reads the
flag once, when JAX initialises, so it must be set before anything imports jax.
"""
import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# No persistent compilation cache in tests: an experiment that turns it on
# (head_ablation) must not leave later tests compiling through it (XLA
# segfaulted compiling the mock main job with the cache on).
os.environ["JAX_ENABLE_COMPILATION_CACHE"] = "false"
# Never let a test wait on a download: TFDS must fail fast offline.
os.environ.setdefault("TFDS_DATA_DIR", os.path.join(os.path.dirname(__file__), "..", ".tfds_test_data"))

import jax  # noqa: E402

jax.config.update("jax_enable_x64", False)
