"""tfjax without TensorFlow: a fresh process in which ``import tensorflow`` fails
imports tfjax, generates MNIST-1D, trains, evaluates and checkpoints."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Hides TensorFlow from every import finder, as if it were not installed:
# importlib.util.find_spec("tensorflow") is None and the import raises
# ModuleNotFoundError (TFDS then takes its TensorFlow-free paths).
HIDE_TENSORFLOW = textwrap.dedent("""
    import sys

    class _Hide:
        def __init__(self, finder):
            self._finder = finder

        def find_spec(self, name, path=None, target=None):
            if name == "tensorflow" or name.startswith("tensorflow."):
                return None
            find = getattr(self._finder, "find_spec", None)
            return find(name, path, target) if find else None

        def __getattr__(self, attr):
            return getattr(self._finder, attr)

    sys.meta_path[:] = [_Hide(f) for f in sys.meta_path]
""")

TRAIN = textwrap.dedent("""
    import importlib.util, json, os, sys
    assert importlib.util.find_spec("tensorflow") is None
    import numpy as np
    from tfjax.config import base_config
    from tfjax.data.pipeline import load_arrays
    from tfjax.train import train_and_evaluate

    data_dir, workdir, out = sys.argv[1:4]
    c = base_config()
    c.dataset, c.data_dir = "mnist1d", data_dir
    c.backbone_kwargs = {"hidden": (16,), "out_features": 8}
    c.embed_dim, c.projector_hidden, c.head.num_layers = 8, (16,), 1
    c.batch_size, c.num_steps, c.warmup_steps = 32, 4, 1
    c.log_every, c.checkpoint_every, c.num_devices, c.write_plots = 2, 2, 1, False
    c.eval.linear_steps, c.eval.finetune_steps, c.eval.finetune_fractions = 5, 5, (1.0,)
    c.eval.head_knn = False
    results = train_and_evaluate(c, workdir, progress=False)
    x, y = load_arrays("mnist1d", "train", data_dir=data_dir)
    np.savez(out, x=x[:200], y=y[:200])
    print(json.dumps({"tensorflow": any(m == "tensorflow" or m.startswith("tensorflow.")
                                        for m in sys.modules),
                      "step": results["step"], "knn": results["knn"],
                      "linear": results["linear"]}))
""")


@pytest.mark.slow
def test_trains_evaluates_and_checkpoints_without_tensorflow(tmp_path):
  env = {**os.environ, "XLA_FLAGS": "", "TF_CPP_MIN_LOG_LEVEL": "3"}
  proc = subprocess.run(
    [
      sys.executable,
      "-c",
      HIDE_TENSORFLOW + TRAIN,
      str(tmp_path / "tfds"),
      str(tmp_path / "run"),
      str(tmp_path / "head.npz"),
    ],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=900,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads(proc.stdout.strip().splitlines()[-1])
  assert report["tensorflow"] is False and report["step"] == 4
  assert 0.0 <= report["knn"] <= 1.0 and 0.0 <= report["linear"] <= 1.0
  assert sorted(os.listdir(tmp_path / "run" / "checkpoints")) == ["2", "4"]
  assert os.listdir(tmp_path / "run" / "tensorboard")  # TensorBoard's own writer
  assert len(open(tmp_path / "run" / "metrics.jsonl").readlines()) == 2
  # The same MNIST-1D records, in the same order, as this process generates.
  from tfjax.data.pipeline import load_arrays

  x, y = load_arrays("mnist1d", "train", data_dir=str(tmp_path / "tfds_here"))
  head = np.load(tmp_path / "head.npz")
  np.testing.assert_array_equal(head["x"], x[:200])
  np.testing.assert_array_equal(head["y"], y[:200])


def test_hiding_tensorflow_makes_its_import_fail():
  code = HIDE_TENSORFLOW + textwrap.dedent("""
        import importlib.util
        assert importlib.util.find_spec("tensorflow") is None
        try:
            import tensorflow
        except ModuleNotFoundError:
            print("hidden")
    """)
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
  assert proc.stdout.strip() == "hidden", proc.stderr


def test_downloading_an_image_dataset_without_tensorflow_is_one_line(tmp_path):
  code = HIDE_TENSORFLOW + textwrap.dedent("""
        import sys
        from tfjax.data.sources import prepare_dataset
        try:
            prepare_dataset("cifar10", data_dir=sys.argv[1], download=True)
        except ImportError as e:
            print(e)
    """)
  proc = subprocess.run(
    [sys.executable, "-c", code, str(tmp_path)],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  lines = proc.stdout.strip().splitlines()
  assert len(lines) == 1 and "install tfjax[tf]" in lines[0] and "'cifar10'" in lines[0], (
    proc.stderr
  )
