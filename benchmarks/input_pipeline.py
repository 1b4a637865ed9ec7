"""Input pipeline throughput vs a tiny-supernet training step, side by side.

Usage: python benchmarks/input_pipeline.py [--batch_size=64] [--steps=40]

Prints, on the embedded fashion_mnist_mini at resolutions 32/40/48:
  1. ms per training batch with everything on the caller's thread (prefetch=0),
     with read-ahead in a background thread, and with read-ahead + the next
     resolution announced (`next(r, next_resolution=...)`: fully rendered ahead);
  2. ms per jitted forward+backward step of the tiny supernet (SearchSpace.tiny(),
     resolution 48), and the time that loop spends waiting in `loader.next`.
"""

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags

from nat_jax.data import datasets as data
from nat_jax.data import pipeline
from nat_jax.model import supernet
from nat_jax.space import search_space as ss

_BATCH = flags.DEFINE_integer("batch_size", 64, "Global batch size.")
_STEPS = flags.DEFINE_integer("steps", 40, "Timed batches per setting.")
RESOLUTIONS = (32, 40, 48)


def time_loader(split, batch_size, steps, prefetch, announce, rs):
    loader = pipeline.TrainLoader(split, batch_size, seed=0, prefetch=prefetch)
    loader.next(rs[0], rs[1] if announce else None)  # warm up the thread
    start = time.perf_counter()
    for i in range(steps):
        loader.next(rs[i + 1], rs[i + 2] if announce else None)
    loader.close()
    return (time.perf_counter() - start) / steps * 1e3


def train_step_fn(model):
    def loss_fn(params, stats, batch, arch):
        logits, upd = model.apply({"params": params, "batch_stats": stats},
                                  batch["image"], arch, train=True,
                                  mutable=["batch_stats"])
        onehot = jax.nn.one_hot(batch["label"], logits.shape[-1])
        return optax.softmax_cross_entropy(logits, onehot).mean(), upd

    @jax.jit
    def step(params, stats, batch, arch):
        (loss, upd), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, stats, batch, arch)
        params = jax.tree.map(lambda p, g: p - 0.01 * g, params, grads)
        return params, upd["batch_stats"], loss

    return step


def main(argv):
    del argv
    b, n = _BATCH.value, _STEPS.value
    split = data.load("fashion_mnist_mini").train
    print(f"fashion_mnist_mini train split ({len(split)} images), batch {b}, "
          f"{jax.device_count()} device(s), {n} batches per setting")
    print("resolution | sync ms/batch | read-ahead ms | announced ms")
    for r in RESOLUTIONS:
        rs = [r] * (n + 2)
        row = [time_loader(split, b, n, p, a, rs)
               for p, a in ((0, False), (2, False), (2, True))]
        print(f"{r:10d} | " + " | ".join(f"{v:13.1f}" for v in row))
    mixed = list(np.random.default_rng(0).choice(RESOLUTIONS, n + 2))
    row = [time_loader(split, b, n, p, a, mixed)
           for p, a in ((0, False), (2, False), (2, True))]
    print("     mixed | " + " | ".join(f"{v:13.1f}" for v in row))

    space = ss.SearchSpace.tiny()
    model, variables = supernet.init_supernet(space, 1.0, 10, jax.random.key(0),
                                              resolution=48, dropout_rate=0.0)
    arch = jax.tree.map(jnp.asarray, space.max_arch().as_arrays())
    step = train_step_fn(model)
    params, stats = variables["params"], variables["batch_stats"]
    loader = pipeline.TrainLoader(split, b, seed=0)
    t0 = time.perf_counter()
    params, stats, loss = step(params, stats, loader.next(48, 48), arch)
    loss.block_until_ready()
    print(f"tiny supernet (max subnet) train step at 48 px: compile "
          f"{time.perf_counter() - t0:.1f} s")
    for announce in (False, True):
        wait = 0.0
        start = time.perf_counter()
        for _ in range(min(n, 10)):
            t = time.perf_counter()
            batch = loader.next(48, 48 if announce else None)
            wait += time.perf_counter() - t
            params, stats, loss = step(params, stats, batch, arch)
            loss.block_until_ready()
        total, m = time.perf_counter() - start, min(n, 10)
        print(f"loop ({'announced' if announce else 'read-ahead'}, {m} steps): "
              f"{total / m * 1e3:.1f} ms/step, of which waiting for data "
              f"{wait / m * 1e3:.1f} ms ({100 * wait / total:.1f}%)")
    loader.close()


if __name__ == "__main__":
    app.run(main)
