"""The user's data: npz:PATH, folder:PATH, tfds:NAME, unlabelled data; one-line errors."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tfjax.data import folder as F
from tfjax.data.pipeline import load_arrays, open_source
from tfjax.data.registry import DatasetNotFoundError, get_dataset_spec
from tfjax.data.sources import labelled_subset_mask

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _npz(path, **arrays):
  np.savez(path, **arrays)
  return str(path)


def _labelled(rng, shape, n_train=30, n_test=12, classes=3, dtype=np.float32):
  def x(n):
    return (
      rng.integers(0, 256, (n,) + shape).astype(dtype)
      if dtype == np.uint8
      else rng.normal(size=(n,) + shape).astype(dtype)
    )

  return dict(
    x_train=x(n_train),
    y_train=np.arange(n_train) % classes,
    x_test=x(n_test),
    y_test=np.arange(n_test) % classes,
  )


def _one_line_error(exc_type, fn, *patterns):
  with pytest.raises(exc_type) as info:
    fn()
  message = str(info.value)
  assert "\n" not in message, message
  for p in patterns:
    assert re.search(p, message), (p, message)
  return message


# ----------------------------------------------------------------------------
# npz
# ----------------------------------------------------------------------------
@pytest.mark.parametrize(
  "shape,kind", [((6, 5, 3), "image"), ((12, 1), "signal"), ((7,), "vector")]
)
def test_npz_kind_shape_classes_and_records(tmp_path, shape, kind):
  rng = np.random.default_rng(hash(shape) % 1000)
  arrays = _labelled(rng, shape, classes=4)
  path = _npz(tmp_path / "d.npz", **arrays)
  spec = get_dataset_spec(f"npz:{path}")
  assert (spec.kind, spec.x_shape, spec.num_classes) == (kind, shape, 4)
  assert (spec.num_train, spec.num_test, spec.labelled) == (30, 12, True)
  for split in ("train", "test"):
    x, y = load_arrays(f"npz:{path}", split)
    np.testing.assert_array_equal(x, arrays[f"x_{split}"])
    np.testing.assert_array_equal(y, arrays[f"y_{split}"])


def test_npz_uint8_images_are_scaled(tmp_path):
  arrays = _labelled(np.random.default_rng(1), (4, 4, 1), dtype=np.uint8)
  path = _npz(tmp_path / "u8.npz", **arrays)
  x, _ = load_arrays(f"npz:{path}", "train")
  np.testing.assert_allclose(x, arrays["x_train"].astype(np.float64) / 255.0, rtol=1e-6)


def _drop(key):
  return lambda a: {k: v for k, v in a.items() if k != key}


def _set(key, fn):
  return lambda a: {**a, key: fn(a)}


NPZ_ERRORS = [
  ("missing x_test", _drop("x_test"), r"missing key 'x_test'"),
  ("missing y_test", _drop("y_test"), r"missing key 'y_test'"),
  (
    "float labels",
    _set("y_train", lambda a: a["y_train"].astype(np.float32)),
    r"y_train must hold integer",
  ),
  (
    "negative label",
    _set("y_test", lambda a: np.where(np.arange(12) == 3, -2, a["y_test"])),
    r"y_test holds label -2",
  ),
  (
    "empty class",
    _set("y_train", lambda a: np.where(a["y_train"] == 1, 2, a["y_train"])),
    r"class 1 has no examples in y_train",
  ),
  ("test class beyond train", _set("y_test", lambda a: np.full(12, 5)), r"class 3 has no examples"),
  (
    "shape mismatch",
    _set("x_test", lambda a: np.zeros((12, 6), np.float32)),
    r"x_train examples have shape \(5,\) but x_test examples \(6,\)",
  ),
  (
    "label count",
    _set("y_train", lambda a: a["y_train"][:-1]),
    r"y_train has shape \(29,\).*30 examples",
  ),
  (
    "nan",
    _set("x_train", lambda a: np.where(np.arange(30)[:, None] == 4, np.nan, a["x_train"])),
    r"x_train holds NaN",
  ),
  ("rank", _set("x_train", lambda a: np.zeros((30, 5, 2), np.float32)), r"examples of shape"),
]


@pytest.mark.parametrize("what,mutate,pattern", NPZ_ERRORS, ids=[e[0] for e in NPZ_ERRORS])
def test_npz_wrong_layout_is_one_line_naming_the_file(tmp_path, what, mutate, pattern):
  arrays = mutate(_labelled(np.random.default_rng(2), (5,)))
  if what == "rank":
    arrays["x_test"] = np.zeros((12, 5, 2), np.float32)
  path = _npz(tmp_path / "bad.npz", **arrays)
  _one_line_error(ValueError, lambda: get_dataset_spec(f"npz:{path}"), re.escape(path), pattern)


def test_npz_missing_file_and_bad_names(tmp_path):
  _one_line_error(
    DatasetNotFoundError, lambda: get_dataset_spec(f"npz:{tmp_path}/none.npz"), "no such file"
  )
  (tmp_path / "junk.npz").write_bytes(b"not a zip")
  _one_line_error(
    ValueError, lambda: get_dataset_spec(f"npz:{tmp_path}/junk.npz"), "not a readable .npz"
  )
  _one_line_error(
    ValueError,
    lambda: get_dataset_spec("no_such_dataset_xyz"),
    r"unknown dataset 'no_such_dataset_xyz'.*folder:PATH, npz:PATH",
  )


# ----------------------------------------------------------------------------
# folder
# ----------------------------------------------------------------------------
def _image(path, rng, size=(9, 7), mode="RGB"):
  channels = {"RGB": 3, "L": 1}[mode]
  pixels = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
  Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode).save(path)


def _folder(root, counts, rng, mode="RGB"):
  for c, n in counts.items():
    os.makedirs(root / c, exist_ok=True)
    for i in range(n):
      _image(root / c / f"{i:02d}.png", rng, size=(5 + i, 4 + 2 * i), mode=mode)
  return root


def _reference(path, size, rgb):
  with Image.open(path) as im:
    im = im.convert("RGB" if rgb else "L").resize((size, size), Image.BILINEAR)
    return np.asarray(im, np.float64).reshape(size, size, -1) / 255.0


def test_folder_seeded_class_balanced_split_and_pixels(tmp_path):
  rng = np.random.default_rng(3)
  counts = {"ant": 6, "bee": 11, "cow": 5}
  root = _folder(tmp_path / "imgs", counts, rng)
  spec = get_dataset_spec(f"folder:{root}", image_size=6)
  assert (spec.kind, spec.x_shape, spec.num_classes) == ("image", (6, 6, 3), 3)
  held = [int(np.floor(F.FOLDER_TEST_FRACTION * n + 0.5)) for n in counts.values()]
  assert (spec.num_train, spec.num_test) == (22 - sum(held), sum(held))
  train, test = (open_source(spec.name, s, spec=spec) for s in ("train", "test"))
  np.testing.assert_array_equal(np.bincount(test.labels), held)
  # Every image lands in exactly one split, decoded as Pillow decodes it
  # (float64 reference), under its class's index (folders sorted by name).
  got = [(train[i]["x"], train.labels[i]) for i in range(len(train))]
  got += [(test[i]["x"], test.labels[i]) for i in range(len(test))]
  paths = [
    (root / c / f"{i:02d}.png", k) for k, c in enumerate(sorted(counts)) for i in range(counts[c])
  ]
  unmatched = list(range(len(got)))
  for path, label in paths:
    ref = _reference(path, 6, rgb=True)
    hit = [j for j in unmatched if got[j][1] == label and np.allclose(got[j][0], ref, atol=1e-6)]
    assert len(hit) == 1, path
    unmatched.remove(hit[0])
  assert not unmatched
  # The split is the seeded class-balanced rule, so a rerun gives the same one.
  labels = np.repeat(np.arange(3), list(counts.values()))
  assert labelled_subset_mask(labels, F.FOLDER_TEST_FRACTION, F.FOLDER_SPLIT_SEED).sum() == sum(
    held
  )


def test_folder_train_test_layout_and_channels(tmp_path):
  rng = np.random.default_rng(4)
  root = tmp_path / "tt"
  _folder(root / "train", {"a": 3, "b": 2}, rng, mode="L")
  _folder(root / "test", {"a": 1, "b": 2}, rng, mode="L")
  spec = get_dataset_spec(f"folder:{root}", image_size=5)
  assert (spec.x_shape, spec.num_train, spec.num_test) == (
    (5, 5, 1),
    5,
    3,
  )  # grayscale only: 1 channel
  test = open_source(spec.name, "test", spec=spec)
  np.testing.assert_array_equal(test.labels, [0, 1, 1])
  np.testing.assert_allclose(
    test[0]["x"], _reference(root / "test" / "a" / "00.png", 5, False), atol=1e-6
  )
  # One colour image among grayscale ones: every image becomes RGB (gray replicated).
  _image(root / "train" / "b" / "colour.png", rng)
  spec = get_dataset_spec(f"folder:{root}", image_size=5)
  assert spec.x_shape == (5, 5, 3)
  x = open_source(spec.name, "test", spec=spec)[0]["x"]
  np.testing.assert_allclose(x, _reference(root / "test" / "a" / "00.png", 5, True), atol=1e-6)
  assert np.array_equal(x[..., 0], x[..., 1]) and np.array_equal(x[..., 0], x[..., 2])


def test_folder_is_converted_once_and_again_when_images_change(tmp_path, monkeypatch):
  rng = np.random.default_rng(5)
  root = _folder(tmp_path / "c", {"x": 3, "y": 3}, rng)
  first = get_dataset_spec(f"folder:{root}", image_size=4).path
  assert os.path.dirname(first) == str(root / ".tfjax_cache")

  def no_decode(*args):
    raise AssertionError("decoded again")

  with monkeypatch.context() as m:
    m.setattr(F, "_decode", no_decode)
    assert get_dataset_spec(f"folder:{root}", image_size=4).path == first
    with pytest.raises(AssertionError, match="decoded again"):  # another size: a new key
      get_dataset_spec(f"folder:{root}", image_size=5)
  _image(root / "x" / "00.png", rng, size=(30, 30))  # new content, size and mtime
  second = get_dataset_spec(f"folder:{root}", image_size=4).path
  assert second != first


def test_folder_wrong_layouts_are_one_line_naming_the_folder(tmp_path):
  rng = np.random.default_rng(6)
  flat = tmp_path / "flat"
  flat.mkdir()
  _image(flat / "a.png", rng)
  _one_line_error(
    ValueError,
    lambda: get_dataset_spec(f"folder:{flat}"),
    str(flat),
    "no class sub-folders",
    "unlabelled=True",
  )
  loose = _folder(tmp_path / "loose", {"a": 2}, rng)
  _image(loose / "stray.png", rng)
  _one_line_error(
    ValueError, lambda: get_dataset_spec(f"folder:{loose}"), "outside the class folders"
  )
  empty = _folder(tmp_path / "empty", {"a": 2}, rng)
  (empty / "b").mkdir()
  _one_line_error(
    ValueError,
    lambda: get_dataset_spec(f"folder:{empty}"),
    str(empty),
    "class folder 'b' holds no images",
  )
  split = tmp_path / "split"
  _folder(split / "train", {"a": 2}, rng)
  _folder(split / "test", {"a": 1, "z": 1}, rng)
  _one_line_error(
    ValueError, lambda: get_dataset_spec(f"folder:{split}"), "test/ has class folder 'z'"
  )
  broken = _folder(tmp_path / "broken", {"a": 2}, rng)
  (broken / "a" / "bad.png").write_bytes(b"not a png")
  _one_line_error(
    ValueError,
    lambda: get_dataset_spec(f"folder:{broken}"),
    re.escape(str(broken / "a" / "bad.png")),
  )
  _one_line_error(
    DatasetNotFoundError, lambda: get_dataset_spec(f"folder:{tmp_path}/none"), "no such directory"
  )


# ----------------------------------------------------------------------------
# unlabelled data
# ----------------------------------------------------------------------------
def test_unlabelled_npz_and_folder(tmp_path):
  from tests.test_train import tiny_config
  from tfjax.config import validate

  arrays = _labelled(np.random.default_rng(7), (8,))
  path = _npz(tmp_path / "u.npz", **_drop("y_train")(_drop("y_test")(arrays)))
  spec = get_dataset_spec(f"npz:{path}")
  assert not spec.labelled and spec.num_classes == 0
  np.testing.assert_array_equal(load_arrays(spec.name, "train")[1], -1)
  config = tiny_config(dataset=f"npz:{path}", label_fraction=1.0, labels_in_loss=True)
  _one_line_error(
    ValueError, lambda: validate(config, 1, check_data=False), "has no labels: only self-supervised"
  )
  flat = tmp_path / "flat"
  flat.mkdir()
  for i in range(4):
    _image(flat / f"{i}.png", np.random.default_rng(i))
  spec = get_dataset_spec(f"folder:{flat}", image_size=4, unlabelled=True)
  assert (spec.labelled, spec.num_train + spec.num_test) == (False, 4)


# ----------------------------------------------------------------------------
# tfds
# ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds_user"))


@pytest.mark.parametrize("name", ["tfds:tfjax_subspaces/tiny", "tfjax_subspaces/tiny"])
def test_tfds_dataset_described_by_its_info(tfds_dir, name):
  load_arrays("subspaces_tiny", "train", data_dir=tfds_dir)  # prepares it (array_record)
  spec = get_dataset_spec(name, data_dir=tfds_dir)
  assert (spec.origin, spec.kind, spec.x_shape, spec.num_classes) == ("tfds", "vector", (8,), 3)
  assert (spec.num_train, spec.num_test, spec.image_key, spec.label_key) == (60, 30, "x", "label")
  for split in ("train", "test"):
    x, y = load_arrays(name, split, data_dir=tfds_dir)
    x_ref, y_ref = load_arrays("subspaces_tiny", split, data_dir=tfds_dir)
    np.testing.assert_array_equal(x, x_ref)
    np.testing.assert_array_equal(y, y_ref)


def test_tfds_dataset_read_as_unlabelled(tfds_dir):
  load_arrays("subspaces_tiny", "train", data_dir=tfds_dir)
  spec = get_dataset_spec("tfds:tfjax_subspaces/tiny", data_dir=tfds_dir, unlabelled=True)
  assert (spec.labelled, spec.label_key, spec.num_classes) == (False, None, 0)
  source = open_source(spec.name, "train", spec=spec)
  np.testing.assert_array_equal(source.labels, -1)
  assert source[5]["label"] == -1
  np.testing.assert_array_equal(
    source[5]["x"], load_arrays("subspaces_tiny", "train", data_dir=tfds_dir)[0][5]
  )


def test_tfds_not_prepared_names_the_fix(tmp_path):
  _one_line_error(
    DatasetNotFoundError,
    lambda: get_dataset_spec("tfds:mnist", data_dir=str(tmp_path)),
    "not prepared",
    re.escape(str(tmp_path)),
    "tfds build mnist --file_format=array_record",
  )


def test_tfds_tfrecord_is_refused_with_the_conversion_that_fixes_it(tmp_path):
  pytest.importorskip("tensorflow")  # TFDS encodes images with TensorFlow
  import tensorflow_datasets as tfds

  tfds.testing.DummyMnist(data_dir=str(tmp_path / "tfr")).download_and_prepare()
  reference = tfds.testing.DummyMnist(data_dir=str(tmp_path / "ar"), file_format="array_record")
  reference.download_and_prepare(file_format="array_record")
  version_dir = str(tmp_path / "tfr" / "dummy_mnist" / "3.0.1")
  message = _one_line_error(
    ValueError,
    lambda: get_dataset_spec("tfds:dummy_mnist", data_dir=str(tmp_path / "tfr")),
    "prepared as tfrecord",
    re.escape(f"python -m tfjax.data.convert {version_dir}"),
  )
  command = re.search(r"`(python -m tfjax.data.convert [^`]+)`", message).group(1).split()
  subprocess.run([sys.executable] + command[1:], check=True, cwd=ROOT, capture_output=True)
  spec = get_dataset_spec("tfds:dummy_mnist", data_dir=str(tmp_path / "tfr"))
  assert (spec.kind, spec.x_shape, spec.num_classes) == ("image", (28, 28, 1), 10)
  with open(os.path.join(version_dir, "dataset_info.json")) as f:
    assert json.load(f)["fileFormat"] == "tfrecord"  # tfds.load still reads the tfrecords
  for split in ("train", "test"):
    x, y = load_arrays("tfds:dummy_mnist", split, data_dir=str(tmp_path / "tfr"))
    x_ref, y_ref = load_arrays("tfds:dummy_mnist", split, data_dir=str(tmp_path / "ar"))
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(x, x_ref)
    assert x.max() <= 1.0 and x.dtype == np.float32  # uint8 images / 255


def test_convert_refuses_a_truncated_shard(tmp_path):
  from tfjax.data import convert

  good = tmp_path / "ok.tfrecord"
  records = [b"abc", b"", b"x" * 300]
  with open(good, "wb") as f:
    for r in records:
      f.write(len(r).to_bytes(8, "little") + b"\0" * 4 + r + b"\0" * 4)
  assert list(convert.read_tfrecord(str(good))) == records
  cut = tmp_path / "cut.tfrecord"
  cut.write_bytes(good.read_bytes()[:-10])
  with pytest.raises(ValueError, match="truncated tfrecord"):
    list(convert.read_tfrecord(str(cut)))
  _one_line_error(
    ValueError, lambda: convert.convert_tfrecord_dir(str(tmp_path)), "no dataset_info.json"
  )


# ----------------------------------------------------------------------------
# End to end: train_and_evaluate on each route, and the command line
# ----------------------------------------------------------------------------
# Few steps, one fusion layer, the cheap probes only: each route end to end.
CHEAP = {
  "num_steps": 4,
  "write_plots": False,
  "head.num_layers": 1,
  "eval.linear_steps": 5,
  "eval.finetune_fractions": (),
  "eval.head_knn": False,
}


def _route(kind, tmp_path, tfds_dir):
  rng = np.random.default_rng(8)
  if kind == "npz":
    return f"npz:{_npz(tmp_path / 'e.npz', **_labelled(rng, (8,), n_train=48, n_test=24))}", {}
  if kind == "folder":
    return f"folder:{_folder(tmp_path / 'f', {'a': 20, 'b': 20}, rng)}", {"image_size": 4}
  load_arrays("subspaces_tiny", "train", data_dir=tfds_dir)
  return "tfds:tfjax_subspaces/tiny", {"data_dir": tfds_dir}


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["npz", "folder", "tfds"])
def test_train_and_evaluate_on_each_route(tmp_path, tfds_dir, kind):
  from tests.test_train import tiny_config
  from tfjax.train import train_and_evaluate

  dataset, extra = _route(kind, tmp_path, tfds_dir)
  config = tiny_config(dataset=dataset, **CHEAP, **extra)
  results = train_and_evaluate(config, str(tmp_path / "run"), progress=False)
  assert (
    results["step"] == 4 and 0.0 <= results["knn"] <= 1.0 and np.isfinite(results["final_loss"])
  )
  assert os.listdir(tmp_path / "run" / "checkpoints")


def test_train_unlabelled_skips_the_probes(tmp_path, capsys):
  from tests.test_train import tiny_config
  from tfjax.train import train_and_evaluate

  arrays = _drop("y_train")(_labelled(np.random.default_rng(9), (8,), n_train=48))
  path = _npz(tmp_path / "u.npz", **arrays)
  config = tiny_config(dataset=f"npz:{path}", loss="info_nce", **CHEAP)
  results = train_and_evaluate(config, str(tmp_path / "run"), progress=False)
  assert results["step"] == 4 and "knn" not in results and results["evaluated_on"] is None
  assert "has no labels: the probes" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("labelled", [True, False])
def test_command_line_trains_an_npz(tmp_path, labelled):
  rng = np.random.default_rng(10)
  arrays = _labelled(rng, (40, 1), n_train=64, n_test=32)
  if not labelled:
    arrays = _drop("y_train")(_drop("y_test")(arrays))
  path = _npz(tmp_path / "sig.npz", **arrays)
  args = [
    f"--config.dataset=npz:{path}",
    f"--workdir={tmp_path / 'w'}",
    "--noprogress",
    "--config.compare=simclr",
    "--config.seeds=1",
    "--config.runs.simclr.num_steps=3",
    "--config.batch_size=16",
    "--config.warmup_steps=1",
    "--config.log_every=1",
    "--config.checkpoint_every=3",
    "--config.num_devices=1",
    "--config.random_baseline=False",
    "--config.compilation_cache=False",
    "--config.write_plots=False",
    "--config.backbone_kwargs.out_features=8",
    "--config.embed_dim=8",
    "--config.eval.linear_steps=5",
    "--config.eval.finetune_steps=5",
    "--config.eval.finetune_fractions=(1.0,)",
  ]
  proc = subprocess.run(
    [sys.executable, "-m", "experiments.train"] + args,
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  rows = json.load(open(tmp_path / "w" / "results.json"))
  if labelled:
    assert [r["method"] for r in rows] == [
      "SimCLR (InfoNCE), self-supervised",
      "raw inputs (no training)",
    ]
    assert 0.0 <= rows[0]["knn"] <= 1.0
  else:  # no probes, no baselines: the training loss only
    assert [r["method"] for r in rows] == ["SimCLR (InfoNCE), self-supervised"]
    assert "knn" not in rows[0] and np.isfinite(rows[0]["final_loss"])
    assert "no labels, so no baselines" in proc.stdout


def test_first_preparation_of_an_offline_dataset_says_one_line(tmp_path, capfd):
  """TFDS's banner, progress bars and absl warnings are held back while an
  offline dataset is generated; one line says what happens, and nothing
  the second time."""
  from tfjax.data.sources import prepare_dataset

  spec, builder = prepare_dataset("subspaces_tiny", data_dir=str(tmp_path))
  out, err = capfd.readouterr()
  lines = [line for line in err.splitlines() if line.strip()]
  assert out == "" and lines == [
    f"preparing dataset subspaces_tiny (generated here, once) in {tmp_path}"
  ], (out, err)
  assert builder.is_prepared() and builder.info.splits["train"].num_examples > 0
  prepare_dataset("subspaces_tiny", data_dir=str(tmp_path))
  assert capfd.readouterr() == ("", "")
