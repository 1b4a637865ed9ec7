"""Adaptation with two widths (one supernet each) vs one width, in one run.

    python -m benchmarks.width_adaptation [--space small] [--steps 15]

Same process, same global batch, same space and resolution: steps/second of
`adaptation.adapt` on one supernet (width 1.0, then width 1.2, each pinned as
a one-width run) and on the two-width set (the width gene drawn from Eq. 3,
half and half), plus what the run holds in memory: bytes of params, BN
statistics and SGD momentum of each width's train state. "expected" is the
two-width rate predicted from the one-width rates (time per step averaged
over the widths drawn): the gap to it is the cost of switching supernets.
Compiles are excluded (each width's step and the step sampler are compiled
in a warm-up first). The three runs alternate twice (A, B, both, both, B, A)
and each keeps its faster pass, so a load change on the shared machine
biases none of them.
"""

import argparse
import os
import time


def _bytes(tree) -> int:
    import jax
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--space", default="small", choices=("tiny", "small"))
    p.add_argument("--steps", type=int, default=15)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--res_index", type=int, default=1)
    args = p.parse_args()
    print(f"load average before {os.getloadavg()}")
    import jax

    jax.config.update("jax_platforms", "cpu")
    import numpy as np

    from nat_jax.data import datasets as data
    from nat_jax.data import pipeline
    from nat_jax.model import supernet
    from nat_jax.runtime import sharding
    from nat_jax.space import search_space as ss
    from nat_jax.train import adaptation as ad

    space = ss.get_space(args.space)
    res = space.resolutions[args.res_index]
    w0, w1 = space.widths[:2]
    sets = {w: supernet.init_supernet(space, w, 10, jax.random.key(i))
            for i, w in enumerate((w0, w1))}
    models = {w: m for w, (m, _) in sets.items()}
    variables = {w: v for w, (_, v) in sets.items()}
    cfg = ad.AdaptConfig()
    mesh = sharding.data_mesh()
    ds = data.load(data.EMBEDDED)
    genes = np.array(space.sample(jax.random.key(1), 100))
    genes[:, 0] = space.resolution_index(res)
    genes[:, 1] = np.arange(100) % 2                  # half of A at each width
    probs = ad.gene_distribution(space, genes)
    total = 100 * args.steps
    loader = pipeline.TrainLoader(ds.train, args.batch, num_devices=mesh.size)

    def pinned(w):
        return ad.fix_width(probs, space, w)

    def timed(state, model, pr):
        t = time.perf_counter()
        state, m = ad.adapt(state, model, loader, pr, args.steps, cfg, mesh=mesh)
        return state, args.steps / (time.perf_counter() - t), m

    # warm-up: compile each width's step (one per (width, resolution)) and
    # the sampler at the timed length
    states = ad.create_train_states(models, variables, cfg, total)
    for w in (w0, w1):
        states, _ = ad.adapt(states, models, loader, pinned(w), 1, cfg, mesh=mesh)
    ad.sample_for_steps(jax.random.key(0), probs, space,
                        np.arange(args.steps, dtype=np.int32))
    singles = {w: ad.create_train_state(models[w], variables[w], cfg, total)
               for w in (w0, w1)}
    rate, held = {w0: 0.0, w1: 0.0, "both": 0.0}, {}
    for order in ((w0, w1, "both"), ("both", w1, w0)):
        for run in order:
            if run == "both":                          # the set, Eq. 3 draws
                states, r, m = timed(states, models, probs)
            else:                                      # one width, pinned
                singles[run], r, _ = timed(singles[run], models[run], probs)
            rate[run] = max(rate[run], r)
    for w, st in singles.items():
        held[w] = _bytes((st.params, st.batch_stats, st.opt_state))
    held["both"] = sum(_bytes((s.params, s.batch_stats, s.opt_state))
                       for s in states.values())
    share = {w: n / args.steps for w, n in m["steps_per_width"].items()}
    expected = 1.0 / sum(share[w] / rate[w] for w in (w0, w1))
    print(f"space={args.space} resolution={res} batch={args.batch} "
          f"timed steps={args.steps} devices={mesh.size}")
    print(f"{'run':>24} {'steps/s':>8} {'held MB':>8}")
    for w in (w0, w1):
        print(f"{f'one width ({w})':>24} {rate[w]:>8.2f} {held[w] / 1e6:>8.2f}")
    print(f"{'two widths (Eq. 3)':>24} {rate['both']:>8.2f} "
          f"{held['both'] / 1e6:>8.2f}   steps per width {m['steps_per_width']}")
    print(f"two widths / one width ({w0}) steps/s: {rate['both'] / rate[w0]:.2f}; "
          f"expected from the per-width rates {expected:.2f} steps/s "
          f"(measured / expected {rate['both'] / expected:.2f})")
    print(f"memory held, two widths / one width ({w0}): "
          f"{held['both'] / held[w0]:.2f}x")
    print(f"load average after {os.getloadavg()}")


if __name__ == "__main__":
    main()
