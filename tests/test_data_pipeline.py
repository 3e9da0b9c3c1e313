"""Input pipelines: real datasets under tfds.testing.mock_data, offline ones for real."""

import time

import numpy as np
import pytest
import tensorflow_datasets as tfds

from tfjax.data import DATASETS, DatasetNotFoundError, get_dataset_spec
from tfjax.data.pipeline import labelled_subset_mask, load_arrays, make_dataset

N_MOCK = 48


@pytest.fixture
def mock_tfds():
  with tfds.testing.mock_data(num_examples=N_MOCK, policy=tfds.testing.MockPolicy.USE_CODE):
    yield


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds_pipe"))


def _take(it, n):
  return [next(it) for _ in range(n)]


def test_registry():
  for name in ["cifar10", "cifar100", "mnist", "fashion_mnist", "subspaces", "digits", "mnist1d"]:
    assert get_dataset_spec(name).name == name
  assert not DATASETS["cifar10"].offline and DATASETS["digits"].offline
  assert DATASETS["mnist1d"].x_shape == (40, 1) and DATASETS["mnist1d"].kind == "signal"
  assert DATASETS["subspaces"].tfds_name.startswith("tfjax_")
  with pytest.raises(ValueError, match="unknown dataset 'foo'; known: .*cifar10"):
    get_dataset_spec("foo")


@pytest.mark.parametrize("name,shape", [("cifar10", (32, 32, 3)), ("mnist", (28, 28, 1))])
def test_real_datasets_under_mock(mock_tfds, name, shape):
  it = make_dataset(name, "train", batch_size=8, num_devices=4, seed=3)
  batches = _take(it, 7)  # > one epoch of 48: repeat works
  b = batches[0]
  assert set(b) == {"x", "label", "index"}
  assert b["x"].shape == (4, 2) + shape and b["x"].dtype == np.float32
  assert b["label"].shape == (4, 2) and b["label"].dtype == np.int32
  assert b["index"].shape == (4, 2) and b["index"].dtype == np.int32
  x = np.concatenate([bb["x"] for bb in batches])
  assert x.min() >= 0.0 and x.max() <= 1.0 and x.max() > 0.5
  # x = uint8 / 255 exactly
  np.testing.assert_allclose(x * 255.0, np.round(x * 255.0), atol=1e-3)
  labels = np.concatenate([bb["label"] for bb in batches])
  assert labels.min() >= 0 and labels.max() < get_dataset_spec(name).num_classes
  # first epoch (6 batches of 8) is a permutation of the 48 indices
  idx = np.concatenate([bb["index"].ravel() for bb in batches[:6]])
  np.testing.assert_array_equal(np.sort(idx), np.arange(N_MOCK))
  # same seed -> same order; another seed -> another order
  again = _take(make_dataset(name, "train", batch_size=8, num_devices=4, seed=3), 7)
  for b1, b2 in zip(batches, again):
    for k in b1:
      np.testing.assert_array_equal(b1[k], b2[k])
  other = next(make_dataset(name, "train", batch_size=8, num_devices=4, seed=4))
  assert not np.array_equal(other["index"], b["index"])
  # the index is the row of load_arrays
  xa, ya = load_arrays(name, "train")
  assert xa.shape == (N_MOCK,) + shape and ya.dtype == np.int32
  np.testing.assert_array_equal(xa[b["index"].ravel()], b["x"].reshape((-1,) + shape))
  np.testing.assert_array_equal(ya[b["index"].ravel()], b["label"].ravel())


def test_unshuffled_single_pass_and_remainder(mock_tfds):
  batches = list(
    make_dataset(
      "cifar10", "test", batch_size=20, shuffle=False, repeat=False, drop_remainder=False
    )
  )
  assert [len(b["index"]) for b in batches] == [20, 20, 8]
  np.testing.assert_array_equal(np.concatenate([b["index"] for b in batches]), np.arange(N_MOCK))
  batches = list(
    make_dataset("cifar10", "test", batch_size=20, shuffle=False, repeat=False, take=30)
  )
  assert len(batches) == 1 and batches[0]["index"].tolist() == list(range(20))


def test_semi_labels_under_mock(mock_tfds):
  it = make_dataset(
    "cifar10", "train", batch_size=N_MOCK, shuffle=False, label_fraction=0.25, seed=1
  )
  b = next(it)
  _, labels = load_arrays("cifar10", "train")
  mask = labelled_subset_mask(labels, 0.25, seed=1)
  want = np.where(mask, labels, -1)
  np.testing.assert_array_equal(b["semi_label"], want[b["index"]])
  assert b["semi_label"].dtype == np.int32


def test_labelled_subset_mask_balance_against_numpy():
  rng = np.random.default_rng(0)
  labels = rng.choice(5, size=1000, p=[0.4, 0.3, 0.2, 0.07, 0.03])
  for frac in [0.01, 0.1, 0.5, 1.0]:
    m = labelled_subset_mask(labels, frac, seed=2)
    assert m.dtype == bool and m.shape == labels.shape
    for c in range(5):
      n_c = int(np.sum(labels == c))
      want = max(1, int(np.floor(frac * n_c + 0.5)))
      assert int(np.sum(m & (labels == c))) == want, (frac, c)
    np.testing.assert_array_equal(m, labelled_subset_mask(labels, frac, seed=2))
  assert not np.array_equal(
    labelled_subset_mask(labels, 0.1, 2), labelled_subset_mask(labels, 0.1, 3)
  )
  assert labelled_subset_mask(labels, 0.0, 0).sum() == 0
  with pytest.raises(ValueError, match="fraction"):
    labelled_subset_mask(labels, 1.5, 0)
  with pytest.raises(TypeError, match="integers"):
    labelled_subset_mask(labels.astype(float), 0.1, 0)


def test_divisibility_error_before_loading(tmp_path):
  t0 = time.time()
  # an empty data_dir: the error must come from the check, not from loading
  with pytest.raises(ValueError, match=r"batch_size 10 .*num_devices 4"):
    make_dataset("cifar10", "train", batch_size=10, num_devices=4, data_dir=str(tmp_path))
  with pytest.raises(ValueError, match="label_fraction"):
    make_dataset("cifar10", "train", batch_size=8, label_fraction=0.0, data_dir=str(tmp_path))
  with pytest.raises(ValueError, match="unknown dataset"):
    make_dataset("nope", "train", batch_size=8)
  assert time.time() - t0 < 5.0
  assert not any(tmp_path.iterdir())


def test_missing_real_dataset_fails_fast(tmp_path):
  t0 = time.time()
  with pytest.raises(DatasetNotFoundError, match=r"tfds build cifar10.*\n.*data_dir") as e:
    make_dataset("cifar10", "train", batch_size=8, data_dir=str(tmp_path))
  assert "download=True" in str(e.value)
  with pytest.raises(FileNotFoundError):
    load_arrays("mnist", "test", data_dir=str(tmp_path))
  assert time.time() - t0 < 10.0


def test_offline_digits_pipeline(data_dir):
  it = make_dataset(
    "digits", "train", batch_size=64, num_devices=4, label_fraction=0.1, seed=0, data_dir=data_dir
  )
  b = next(it)
  assert b["x"].shape == (4, 16, 8, 8, 1) and b["semi_label"].shape == (4, 16)
  x, y = load_arrays("digits", "train", data_dir=data_dir)
  assert x.shape == (1437, 8, 8, 1) and y.shape == (1437,)
  np.testing.assert_array_equal(x[b["index"].ravel()], b["x"].reshape(-1, 8, 8, 1))
  # one unshuffled pass: semi labels realise the class-balanced 10% mask
  full = next(
    make_dataset(
      "digits",
      "train",
      batch_size=1437,
      shuffle=False,
      label_fraction=0.1,
      seed=0,
      data_dir=data_dir,
    )
  )
  semi = full["semi_label"]
  counts = np.bincount(y, minlength=10)
  np.testing.assert_array_equal(
    np.bincount(semi[semi >= 0], minlength=10), np.floor(0.1 * counts + 0.5).astype(int)
  )
  np.testing.assert_array_equal(semi[semi >= 0], full["label"][semi >= 0])


@pytest.mark.parametrize("name,shape", [("mnist1d", (40, 1)), ("subspaces_tiny", (8,))])
def test_offline_vectors_and_signals(data_dir, name, shape):
  b = next(make_dataset(name, "test", batch_size=10, data_dir=data_dir))
  assert b["x"].shape == (10,) + shape and b["x"].dtype == np.float32
  assert b["label"].max() < get_dataset_spec(name).num_classes


def test_validation_split_is_balanced_disjoint_and_seeded(data_dir):
  from tfjax.data.pipeline import open_source, source_labels, split_source

  source = open_source("digits", "train", data_dir=data_dir)
  train, val = split_source(source, 0.2, seed=3)
  assert len(train) + len(val) == len(source)
  assert not set(train.indices) & set(val.indices)
  counts = np.bincount(source_labels(source), minlength=10)
  np.testing.assert_array_equal(
    np.bincount(val.labels, minlength=10), np.floor(0.2 * counts + 0.5).astype(int)
  )
  np.testing.assert_array_equal(val[0]["x"], source[int(val.indices[0])]["x"])
  again, _ = split_source(source, 0.2, seed=3)
  np.testing.assert_array_equal(again.indices, train.indices)
  with pytest.raises(ValueError, match="validation_fraction"):
    split_source(source, 1.0)


def test_mnist1d_variant_differs_from_default(data_dir):
  x, y = load_arrays("mnist1d", "test", data_dir=data_dir)
  xs, ys = load_arrays("mnist1d_shifted", "test", data_dir=data_dir)
  assert x.shape == xs.shape == (1000, 40, 1)
  assert not np.allclose(x, xs)


def test_in_memory_reads_small_sources_whole_and_keeps_batches(data_dir):
  from tfjax.data.pipeline import (
    ArraySource,
    in_memory,
    open_source,
    read_batch,
    split_source,
    train_batches,
  )

  source = open_source("mnist1d", "train", data_dir=data_dir)
  copy = in_memory(source, 1 << 20)  # 4000 × 40 float32 = 625 KiB
  assert isinstance(copy, ArraySource) and len(copy) == len(source)
  rows = np.array([0, 17, 3999, 17])
  want, got = read_batch(source, rows), read_batch(copy, rows)
  for key in ("x", "label", "index"):
    np.testing.assert_array_equal(got[key], want[key])
  # The training batches of a step are the same from disk and from memory.
  kw = dict(seed=3, batch_size=32, start_step=5, end_step=7, num_threads=0)
  for (s1, _, b1), (s2, _, b2) in zip(train_batches(source, **kw), train_batches(copy, **kw)):
    assert s1 == s2
    np.testing.assert_array_equal(b1["x"], b2["x"])
    np.testing.assert_array_equal(b1["label"], b2["label"])
  # Over the limit, or the limit 0: streamed (the source itself); a source
  # already in memory is returned as it is; subsets are read in their order.
  assert in_memory(source, 4000 * 40 * 4 - 1) is source
  assert in_memory(source, 0) is source
  assert in_memory(copy, 1 << 20) is copy
  _, val = split_source(source, 0.25, seed=0)
  val_copy = in_memory(val, 1 << 20)
  np.testing.assert_array_equal(val_copy.x[5], source[int(val.indices[5])]["x"])
  np.testing.assert_array_equal(val_copy.labels, val.labels)
