"""Host memory does not grow with the dataset: training streams its batches.

Two fresh processes train a few steps on ``tfds.testing.mock_data`` CIFAR-10
(32×32×3 uint8: 50,000 and 5,000 examples); their peak RSS must differ by less
than 150 MiB (50,000 images in memory would be 146 MiB as uint8, 586 MiB as
float32).
"""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WORKER = r"""
import os, sys, json
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import tensorflow_datasets as tfds
from tfjax import train
from tfjax.config import base_config
num_examples, workdir = int(sys.argv[1]), sys.argv[2]
c = base_config()
c.dataset = "cifar10"
c.backbone = "small_cnn"
c.backbone_kwargs = {"channels": (8, 16), "out_features": 16}
c.embed_dim, c.projector_hidden = 8, (16,)
c.loss = "info_nce"
c.batch_size, c.num_steps, c.warmup_steps = 32, 20, 1
c.log_every, c.checkpoint_every, c.num_devices = 5, 1000, 1
with tfds.testing.mock_data(num_examples=num_examples):
  out = train.train_and_evaluate(c, workdir, progress=False, stop_after=6)
peak = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0]
print(json.dumps({"step": out["step"], "peak_kib": int(peak.split()[1])}))
"""


def _peak_rss_kib(num_examples, workdir):
  # Both processes compile their programs (programs read from the test
  # suite's compilation cache would spare the second one compiler memory).
  env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
  env.update(XLA_FLAGS="", PYTHONPATH=ROOT)
  out = subprocess.run(
    [sys.executable, "-c", WORKER, str(num_examples), str(workdir)],
    capture_output=True,
    text=True,
    env=env,
    timeout=600,
    cwd=ROOT,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  import json

  result = json.loads(out.stdout.strip().splitlines()[-1])
  assert result["step"] == 6
  return result["peak_kib"]


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux /proc")
def test_peak_memory_does_not_grow_with_the_dataset(tmp_path):
  small = _peak_rss_kib(5_000, tmp_path / "small")
  large = _peak_rss_kib(50_000, tmp_path / "large")
  print(f"peak RSS: 5,000 examples {small / 1024:.0f} MiB, 50,000 examples {large / 1024:.0f} MiB")
  assert abs(large - small) < 150 * 1024, (small, large)
