r"""Benchmark of the TransFusion training step, dense vs blockwise (experiments/benchmark.py).

    python -m experiments.benchmark --config=experiments/configs/benchmark.py --noprogress \
        --workdir=workdirs/benchmark_cpu_fp32        # docs/benchmark/cpu_fp32.md
    python -m experiments.benchmark --config=experiments/configs/benchmark.py:bf16 --noprogress \
        --workdir=workdirs/benchmark_cpu_bf16        # docs/benchmark/cpu_bf16.md
    python -m experiments.benchmark --config=experiments/configs/benchmark.py:quick --noprogress

Gives (2-core AMD EPYC CPU shared with other jobs, load average 2.6–3.9;
the full table and JSON: docs/benchmark/cpu_fp32.md, ~14 min; median of 3
steps, fp32, L = 5, blocks of 512):

    path       n      width  step     plan GiB  peak RSS−base GiB
    dense      2048   512    1.06 s   0.49      0.76
    blockwise  2048   512    1.05 s   0.23      0.46
    dense      8192   512    18.9 s   6.33      6.62
    blockwise  8192   512    13.9 s   0.77      1.01
    dense      16384  512    —        24.1      (not run: plan > 60 % of RAM)
    blockwise  16384  512    56.5 s   1.50      1.76
    blockwise  16384  128    18.6 s   0.53      0.76

Largest n whose compiled step fits 2 GiB: dense 4096 (width 512) / 4608
(128), blockwise 21504 / 61440.  The ``jnp.dot`` 4096² peak measured
181–233 GFLOP/s in that run, so the percentages of peak in the table are
loose (one blockwise row exceeds 100 %).  ``:bf16`` (docs/benchmark/
cpu_bf16.md, load 1.8–4.6, ~2 min): the blockwise step with bfloat16
matmuls takes 0.84 s at n = 2048 and 15.6 s at n = 8192 (width 512), plans
0.22 / 0.76 GiB; this CPU's bf16 ``jnp.dot`` measured 249–689 GFLOP/s.

What is timed is the library's one training step (``tfjax.step.train_step``,
jitted by ``tfjax.devices.compile_step(1)``) of the run configured below: the
raw vectors (``backbone="identity"``, no projector: ``embed_dim=0``) go
straight into the TransFusion head, whose JSD loss sees two views of n/2
sources (n rows), made by the vector augmentation at strength 0 (the views
equal the inputs), followed by an Adam update (``adamw`` with no weight decay,
constant learning rate).

Sizes (``arg``):

* ``""``: n ∈ {512, 2048, 8192, 16384}, width ∈ {512, 128}, 3 timed steps,
  the largest n within 2 GiB per width and implementation (≈ 14 min here);
* ``"quick"``: n ∈ {512, 2048}, width 128, 2 timed steps (a few minutes);
* ``"bf16"``: blockwise only, bfloat16 matmuls, width 512, n ∈ {2048, 8192};
* ``"tiny"``: n = 64, width 16, 2 layers, blocks of 16 (the smoke test).
* ``"gpu"``: the accelerator check instead (``gpu`` fields; experiments/benchmark_gpu.py,
  docs/benchmark/README.md "On a GPU"): the main job's step, ResNet-18 steps of SimCLR,
  SupCon and TransFusion at batch 512 and 2048, the blockwise head at n = 65,536, in float32
  and bfloat16, within 8 minutes on one H100 (``experiments/gpu_check.sh`` runs it there);
* ``"gpu_tiny"``: those rows at CPU sizes, in this process (the test).

Every field below can be overridden, e.g. ``--config.sizes=512,2048``
(sizes, widths and implementations are comma-separated strings).
"""

import ml_collections

from tfjax.config import base_config

# The accelerator check (":gpu"): each method's fields over the ResNet-18 step's
# (experiments/benchmark_gpu.py).
METHOD_FIELDS = {
  "simclr": {"loss": "info_nce"},
  "supcon": {"loss": "supcon", "label_fraction": 1.0, "labels_in_loss": True},
  "transfusion": {"loss": "jsd", "label_fraction": 1.0, "labels_in_loss": True},
}
RESNET_FIELDS = {
  "dataset": "cifar10",  # only its kind ("image") matters: the images are random
  "backbone": "resnet18",  # CIFAR stem: 3x3 conv, no max-pool
  "backbone_kwargs": {"width": 1.0},
  "embed_dim": 128,
  "projector_hidden": (512,),
  "augment": "",  # the image default: SimCLR's crops, flips, colour jitter, grey
  "augment_strength": 1.0,
}


def gpu_check(c, tiny: bool):
  """The accelerator check's fields: ``c.gpu`` (at CPU-test sizes when ``tiny``)."""
  c.gpu = ml_collections.ConfigDict(
    dict(
      main_run="transfusion",  # a run of experiments/configs/default.py
      main_batch_size=0,  # 0: the main job's
      data_dir=ml_collections.FieldReference(None, field_type=str),  # the main job's data
      methods=",".join(METHOD_FIELDS),
      method_fields=METHOD_FIELDS,
      resnet=RESNET_FIELDS,
      image_size=32,
      batches="512,2048",
      dtypes="float32,bfloat16",
      head_n=65536,
      head_width=128,
      subprocess=True,  # each step in a fresh process: its own peak memory
      budget_s=420.0,  # rows not started by then are not run
      docs_dir="docs/benchmark",  # also write gpu_<device>.md there ("": the workdir only)
    )
  )
  c.repeats, c.warmup, c.timeout = 5, 1, 300.0
  if tiny:  # a small CNN stands in for ResNet-18, whose compilation takes minutes on CPU
    c.gpu.resnet.backbone, c.gpu.resnet.backbone_kwargs = "small_cnn", {"channels": (4,)}
    c.gpu.main_batch_size, c.gpu.batches, c.gpu.image_size = 16, "8", 8
    c.gpu.head_n, c.gpu.head_width, c.gpu.subprocess, c.gpu.docs_dir = 256, 16, False, ""
    c.gpu.budget_s, c.repeats, c.head.num_layers, c.head.block_size = 3600.0, 2, 2, 64


def get_config(arg: str = ""):
  c = base_config()
  # The fields a method's recipe fills when unset (tfjax.recipes), fixed
  # to the values this experiment runs with.
  c.temperature = 0.1
  c.num_steps = 1000
  c.head.final_projection = "learned"
  c.head.activation = "relu"
  # The step: raw vectors -> TransFusion head -> JSD over 2 views; Adam.
  c.dataset = "subspaces"  # only its kind ("vector") matters: no data is read
  c.backbone = "identity"
  c.embed_dim = 0
  c.loss = "jsd"
  c.num_views = 2
  c.augment = ""  # the vector default; at strength 0 the identity
  c.augment_strength = 0.0
  c.optimizer = "adamw"
  c.learning_rate = 1e-3
  c.weight_decay = 0.0
  c.schedule = "constant"
  c.warmup_steps = 0
  c.num_devices = 1
  c.head.num_layers = 5
  c.head.block_size = 512
  c.head.compute_dtype = None  # e.g. "bfloat16" (blockwise matmuls)
  c.write_plots = False
  with c.unlocked():
    # The grid: rows n of the head's input (n/2 sources × 2 views), widths d.
    c.sizes = "512,2048,8192,16384"
    c.widths = "512,128"
    c.implementations = "dense,blockwise"
    c.repeats = 3  # timed steps (the median is reported)
    c.warmup = 1  # untimed steps first (0: time the first call)
    c.matmul_size = 4096  # the jnp.dot that measures the matmul peak
    # Largest n whose compiled plan fits this many GiB (0: skip the search),
    # searched in multiples of cap_granularity.
    c.memory_cap_gib = 2.0
    c.cap_granularity = 512
    # Skip configs whose plan exceeds this (0: 60 % of the available RAM on
    # CPU, no limit on accelerators).
    c.max_ram_gib = 0.0
    c.timeout = 3600.0  # seconds per subprocess
    # XLA's CPU scheduler in every subprocess (tfjax.runtime): "memory" or
    # "concurrency" (XLA's default).
    c.xla_cpu_scheduler = "memory"
  if arg == "quick":
    c.sizes, c.widths, c.repeats = "512,2048", "128", 2
    c.matmul_size, c.cap_granularity = 2048, 1024
  elif arg == "bf16":
    c.head.compute_dtype = "bfloat16"
    c.implementations, c.widths, c.sizes = "blockwise", "512", "2048,8192"
    c.memory_cap_gib = 0.0
  elif arg == "tiny":
    c.sizes, c.widths, c.repeats = "64", "16", 1
    c.head.num_layers, c.head.block_size = 2, 16
    c.matmul_size, c.memory_cap_gib, c.cap_granularity = 256, 0.005, 64
    c.timeout = 300.0
  elif arg in ("gpu", "gpu_tiny"):
    with c.unlocked():
      gpu_check(c, tiny=arg == "gpu_tiny")
  elif arg:
    raise ValueError(
      f"unknown config argument {arg!r}; use '', 'quick', 'bf16', 'tiny', 'gpu' or 'gpu_tiny'"
    )
  return c
