"""One process of the two-process test (tests/test_multihost.py); not a test itself.

    python tests/multihost_worker.py COORDINATOR NUM_PROCESSES PROCESS_ID WORKDIR

Runs a few TransFusion training steps on the fixed toy batch of
tests/test_train.py over all devices of all processes; process 0 saves the
final parameters to WORKDIR/params.npz.
"""

import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tfjax import distributed  # noqa: E402

coordinator, num_processes, process_id, workdir = sys.argv[1:5]
distributed.initialize(coordinator, int(num_processes), int(process_id))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from tests.test_train import tiny_config, toy_data  # noqa: E402
from tfjax import train  # noqa: E402

assert jax.process_count() == int(num_processes), jax.process_count()
config = tiny_config(
  num_devices=0, optimizer="sgd", learning_rate=0.05, num_steps=3, checkpoint_every=3, log_every=1
)
out = train.train_and_evaluate(config, workdir, data=toy_data(), progress=False, stop_after=3)
if distributed.is_primary():
  flat = {
    jax.tree_util.keystr(k): np.asarray(v)
    for k, v in jax.tree_util.tree_flatten_with_path(out["state"].params)[0]
  }
  np.savez(os.path.join(workdir, "params.npz"), **flat)
print(
  f"process {jax.process_index()} of {jax.process_count()}: "
  f"{jax.local_device_count()} local / {jax.device_count()} global devices, "
  f"step {out['step']}",
  flush=True,
)
