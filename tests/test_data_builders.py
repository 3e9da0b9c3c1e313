"""The offline TFDS builders really build (no download) and load, deterministically."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from tfjax.data import builders as B


def _load(name, data_dir, split):
  pytest.importorskip("tensorflow")  # as_dataset is tf.data (the [tf] extra)
  b = tfds.builder(name, data_dir=str(data_dir))
  b.download_and_prepare()
  ds = b.as_dataset(split=split, batch_size=-1, shuffle_files=False)
  d = tfds.as_numpy(ds)
  return b, d["x"], d["label"]


def _sorted_rows(x):
  x = np.asarray(x, np.float64).reshape(len(x), -1)
  return x[np.lexsort(x.T[::-1])]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("tfds")


def test_generate_subspaces_model_float64():
  d = B.generate_subspaces(4, 10, 3, 0.0, num_train=40, num_test=20, seed=5)
  U = d["bases"]
  for k in range(4):  # orthonormal bases
    np.testing.assert_allclose(U[k].T @ U[k], np.eye(3), atol=1e-10)
  for x, y in [(d["x_train"], d["y_train"]), (d["x_test"], d["y_test"])]:
    x = x.astype(np.float64)
    proj = np.einsum("ndr,nr->nd", U[y], np.einsum("ndr,nd->nr", U[y], x))
    np.testing.assert_allclose(proj, x, atol=1e-6)  # noise 0: x lies in its subspace
    np.testing.assert_array_equal(np.bincount(y, minlength=4), [len(y) // 4] * 4)
  # with noise: residual off the subspace has E||.||^2 = noise^2 (d - r) / d
  n = B.generate_subspaces(2, 50, 5, 0.3, num_train=4000, num_test=2, seed=1)
  x, y, U = n["x_train"].astype(np.float64), n["y_train"], n["bases"]
  resid = x - np.einsum("ndr,nr->nd", U[y], np.einsum("ndr,nd->nr", U[y], x))
  assert np.mean(np.sum(resid**2, 1)) == pytest.approx(0.09 * 45 / 50, rel=0.03)
  assert np.mean(np.sum(x**2, 1)) == pytest.approx(1 + 0.09, rel=0.03)
  again = B.generate_subspaces(2, 50, 5, 0.3, num_train=4000, num_test=2, seed=1)
  np.testing.assert_array_equal(again["x_train"], n["x_train"])
  with pytest.raises(ValueError, match="subspace_dim"):
    B.generate_subspaces(2, 3, 4, 0.1, 10, 10)


def test_subspaces_builder_builds_offline_and_is_deterministic(data_dir, tmp_path):
  b, x, y = _load("tfjax_subspaces/tiny", data_dir, "train")
  cfg = b.builder_config
  assert (cfg.num_clusters, cfg.ambient_dim, cfg.subspace_dim) == (3, 8, 2)
  assert x.shape == (60, 8) and x.dtype == np.float32
  assert y.min() == 0 and y.max() == 2
  np.testing.assert_array_equal(np.bincount(y), [20, 20, 20])
  assert b.info.splits["test"].num_examples == 30
  # same data as the generator (TFDS reorders examples: compare as sets of rows)
  ref = B.generate_subspaces(3, 8, 2, 0.05, 60, 30, seed=0)
  np.testing.assert_array_equal(_sorted_rows(x), _sorted_rows(ref["x_train"]))
  # a second build elsewhere gives identical files' content and order
  _, x2, y2 = _load("tfjax_subspaces/tiny", tmp_path, "train")
  np.testing.assert_array_equal(x2, x)
  np.testing.assert_array_equal(y2, y)


def test_digits_builder(data_dir):
  from sklearn.datasets import load_digits

  b, x, y = _load("tfjax_digits", data_dir, "train")
  _, xt, yt = _load("tfjax_digits", data_dir, "test")
  assert x.shape == (1437, 8, 8, 1) and xt.shape == (360, 8, 8, 1) and x.dtype == np.float32
  assert x.min() >= 0.0 and x.max() <= 1.0 and x.max() == 1.0
  assert set(np.unique(y)) == set(range(10)) and set(np.unique(yt)) == set(range(10))
  # stratified: every class has 36 (+-1) test examples
  assert np.all(np.abs(np.bincount(yt) - 36) <= 1)
  # train + test together are exactly sklearn's digits, pixel / 16
  ref = load_digits()
  allx = np.concatenate([x, xt])[..., 0].reshape(-1, 64)
  np.testing.assert_array_equal(_sorted_rows(allx), _sorted_rows(ref.data / 16.0))
  np.testing.assert_array_equal(np.sort(np.concatenate([y, yt])), np.sort(ref.target))


def test_mnist1d_builder_matches_package_and_keeps_global_rng(data_dir):
  from mnist1d.data import get_dataset_args, make_dataset

  np.random.seed(123)
  _, x, y = _load("tfjax_mnist1d", data_dir, "train")
  assert np.random.randint(1 << 30) == np.random.RandomState(123).randint(
    1 << 30
  )  # global RNG restored
  # (Python's `random` is not checked: TFDS itself draws from it for temp-dir names.)
  _, xt, yt = _load("tfjax_mnist1d", data_dir, "test")
  assert x.shape == (4000, 40, 1) and xt.shape == (1000, 40, 1) and x.dtype == np.float32
  assert y.min() == 0 and y.max() == 9 and len(np.unique(yt)) == 10
  ref = make_dataset(get_dataset_args())
  np.testing.assert_allclose(_sorted_rows(x), _sorted_rows(ref["x"].astype(np.float32)), atol=0)
  np.testing.assert_array_equal(np.bincount(y, minlength=10), np.bincount(ref["y"], minlength=10))
