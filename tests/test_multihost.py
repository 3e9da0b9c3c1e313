"""Two real processes on localhost (2 fake CPU devices each, gloo collectives)
train the TransFusion head on a fixed global batch and end with the same
parameters as one process with four devices and as one device."""

import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from tests.test_train import tiny_config, toy_data
from tfjax import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _flat(params):
  return {
    jax.tree_util.keystr(k): np.asarray(v)
    for k, v in jax.tree_util.tree_flatten_with_path(params)[0]
  }


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
  coordinator = f"127.0.0.1:{_free_port()}"
  workdir = tmp_path / "two_processes"
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  procs = [
    subprocess.Popen(
      [
        sys.executable,
        os.path.join(ROOT, "tests", "multihost_worker.py"),
        coordinator,
        "2",
        str(i),
        str(workdir),
      ],
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
      env=env,
    )
    for i in range(2)
  ]
  logs = []
  for p in procs:
    try:
      out, _ = p.communicate(timeout=400)
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      pytest.fail("the two-process run did not finish in 400 s")
    logs.append(out)
    assert p.returncode == 0, out[-3000:]
  assert "2 local / 4 global devices, step 3" in logs[0], logs[0][-2000:]
  multi = dict(np.load(workdir / "params.npz"))
  # Only process 0 wrote metrics and the config; the checkpoint is shared.
  assert (workdir / "metrics.jsonl").exists()
  assert sorted(os.listdir(workdir / "checkpoints")) == ["3"]

  results = {}
  for devices in (4, 1):
    config = tiny_config(
      num_devices=devices,
      optimizer="sgd",
      learning_rate=0.05,
      num_steps=3,
      checkpoint_every=3,
      log_every=1,
    )
    out = train.train_and_evaluate(
      config, str(tmp_path / f"d{devices}"), data=toy_data(), progress=False, stop_after=3
    )
    results[devices] = _flat(out["state"].params)
  assert multi.keys() == results[1].keys()
  for name in multi:
    # Same float32 sums in other orders: agreement to ~1e-5 relative.
    np.testing.assert_allclose(multi[name], results[4][name], rtol=1e-4, atol=2e-5, err_msg=name)
    np.testing.assert_allclose(multi[name], results[1][name], rtol=1e-4, atol=2e-5, err_msg=name)
