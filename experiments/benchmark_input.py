"""Input-pipeline throughput: tf.data alone, and tf.data + jitted on-device views.

Usage::

    python -m experiments.benchmark_input --dataset digits
    python -m experiments.benchmark_input --dataset mnist1d --batch-size 512 --steps 100

Prints examples per second for (1) the TFDS pipeline alone (numpy batches out
of :func:`tfjax.data.make_dataset`) and (2) the pipeline followed by a jitted
:func:`tfjax.data.augment.make_views` (two views, the dataset kind's default
augmentation) on the default JAX device, blocking on the result each step.
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp


def _rate(fn, steps, batch_size):
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    return steps * batch_size / (time.perf_counter() - t0)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="digits")
    p.add_argument("--split", default="train")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--strength", type=float, default=1.0)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--download", action="store_true", help="let TFDS download a missing real dataset")
    args = p.parse_args(argv)

    from tfjax.data import get_dataset_spec
    from tfjax.data.augment import get_augment_fn, make_views
    from tfjax.data.pipeline import make_dataset

    spec = get_dataset_spec(args.dataset)
    it = make_dataset(args.dataset, args.split, batch_size=args.batch_size, seed=0,
                      data_dir=args.data_dir, download=args.download)
    augment_fn = get_augment_fn(spec.kind)

    @jax.jit
    def views(key, step, x, strength):
        # fold the step in on device: an eager jax.random.split per step costs ms on CPU
        key = jax.random.fold_in(key, step)
        return make_views(key, x, num_views=2, strength=strength, augment_fn=augment_fn)

    key = jax.random.key(0)
    strength = jnp.float32(args.strength)
    for _ in range(args.warmup):  # fills the shuffle buffer / cache, compiles
        b = next(it)
        jax.block_until_ready(views(key, 0, b["x"], strength))

    pipe = _rate(lambda: next(it), args.steps, args.batch_size)

    state = {"step": 0}

    def step():
        b = next(it)
        state["step"] += 1
        jax.block_until_ready(views(key, state["step"], b["x"], strength))

    both = _rate(step, args.steps, args.batch_size)
    dev = jax.devices()[0]
    print(f"dataset={args.dataset} kind={spec.kind} x_shape={spec.x_shape} batch={args.batch_size} "
          f"steps={args.steps} device={dev.platform}:{dev.device_kind}")
    print(f"pipeline only:                    {pipe:12.0f} examples/s")
    print(f"pipeline + jitted 2-view augment: {both:12.0f} examples/s (strength {args.strength})")


if __name__ == "__main__":
    main()
