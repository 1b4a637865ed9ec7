"""Adaptation and evaluation throughput, side by side in one run.

    python -m benchmarks.adaptation [--space tiny|ofa] [--steps 20]

Training: images/second of `adaptation.adapt` on 1 and on 4 forced CPU
devices (each in a subprocess, since the device count is fixed at JAX start),
same global batch, with the per-step breakdown: host data (loader + sharding),
step dispatch, host sync (waiting for the step's loss). Evaluation: seconds
per subnet (and subnets/minute) of `evaluation.evaluate_subnets` (BN
re-calibration + validation), one subnet per compiled call in the default
single-subnet mode ("switch" on CPU) and in "masked", side by side, and
several subnets per call (vmap). Compiles are excluded
(a warm-up call first). Then the training step in each
`AdaptConfig.exec_mode` ("masked", the default, and "switch"), 1 device,
side by side: images/second and compile seconds.
"""

import argparse
import json
import os
import subprocess
import sys
import time


def child(args):
    import jax

    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_num_cpu_devices", args.devices)
    import numpy as np

    from nat_jax.data import datasets as data
    from nat_jax.data import pipeline
    from nat_jax.model import supernet
    from nat_jax.runtime import sharding
    from nat_jax.space import search_space as ss
    from nat_jax.train import adaptation as ad
    from nat_jax.train import calibration
    from nat_jax.train import evaluation as ev

    space = ss.get_space(args.space)
    res = space.resolutions[args.res_index]
    model, variables = supernet.init_supernet(space, space.widths[0], 10,
                                              jax.random.key(0))
    ds = data.load(data.EMBEDDED)
    genes = np.array(space.sample(jax.random.key(1), 100))
    genes[:, 0] = space.resolution_index(res)
    genes[:, 1] = 0  # the width of `model` (one supernet here)
    probs = ad.gene_distribution(space, genes, floor=0.0)
    cfg = ad.AdaptConfig(exec_mode=args.train_exec_mode)
    mesh = sharding.data_mesh()
    out = {"devices": len(jax.devices()), "resolution": res}
    if args.mode in ("train", "both"):
        loader = pipeline.TrainLoader(ds.train, args.batch, num_devices=1)
        state = ad.create_train_state(model, variables, cfg, 10_000)
        t = time.perf_counter()
        state, _ = ad.adapt(state, model, loader, probs, 2, cfg, mesh=mesh)
        out["train_compile_s"] = time.perf_counter() - t
        state, m = ad.adapt(state, model, loader, probs, args.steps, cfg,
                            mesh=mesh)
        out.update({k: m[k] for k in ("images_per_s", "wall_s", "data_s",
                                      "step_s", "sync_s")})
        out["train_steps"] = args.steps
    if args.mode in ("eval", "both"):
        cal = pipeline.CalibrationSet(ds.train, 2000, 200)
        sub = list(genes[:args.subnets])
        # one subnet per call in each exec mode (None: the default, "switch"
        # on CPU), then several per call (vmap, masked)
        for name, mode, g in (("g1", None, 1), ("g1_masked", "masked", 1),
                              ("g4", None, 4)):
            ecfg = ev.EvalConfig(batch_size=200, subnets_per_call=g)
            m = model if mode is None else model.clone(exec_mode=mode)
            ev.evaluate_subnets(m, variables, sub[:g], space, ds.val,
                                ds.train, ecfg, mesh=mesh, calibration=cal)
            t = time.perf_counter()
            ev.evaluate_subnets(m, variables, sub, space, ds.val, ds.train,
                                ecfg, mesh=mesh, calibration=cal)
            out[f"eval_s_per_subnet_{name}"] = (time.perf_counter() - t) / len(sub)
        out["single_subnet_mode"] = supernet.default_exec_mode(True)
        out["eval_images"] = len(ds.val)
        images = [b["image"] for b in cal.batches(res)]
        calibration.recalibrate_bn(model, variables, space.decode(sub[0]), images)
        t = time.perf_counter()
        for g in sub:
            jax.block_until_ready(calibration.recalibrate_bn(
                model, variables, space.decode(g), images))
        out["recal_s_per_subnet"] = (time.perf_counter() - t) / len(sub)
    print("RESULT " + json.dumps(out))


def run_child(devices, args, mode, train_exec_mode="masked"):
    cmd = [sys.executable, "-m", "benchmarks.adaptation", "--child",
           "--train_exec_mode", train_exec_mode,
           "--devices", str(devices), "--space", args.space, "--steps",
           str(args.steps), "--batch", str(args.batch), "--mode", mode,
           "--res_index", str(args.res_index), "--subnets", str(args.subnets)]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"benchmark child failed:\n{proc.stderr[-3000:]}")


def main():
    print(f"load average {os.getloadavg()}")
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--space", default="tiny", choices=("tiny", "ofa"))
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--res_index", type=int, default=-1)
    p.add_argument("--subnets", type=int, default=8)
    p.add_argument("--devices", type=int, default=1)
    p.add_argument("--mode", default="both", choices=("train", "eval", "both"))
    p.add_argument("--train_exec_mode", default="masked",
                   choices=("masked", "switch"))
    p.add_argument("--compare_exec_modes", type=int, default=1,
                   help="1: also time the training step in 'switch' mode")
    p.add_argument("--child", action="store_true")
    args = p.parse_args()
    if args.child:
        return child(args)
    one = run_child(1, args, "both")
    four = run_child(4, args, "train")
    print(f"space={args.space} resolution={one['resolution']} "
          f"global batch={args.batch}, {args.steps} timed steps")
    print(f"{'devices':>8} {'img/s':>8} {'data ms':>8} {'step ms':>8} "
          f"{'sync ms':>8} {'compile s':>9}")
    for r in (one, four):
        n = r["train_steps"]
        print(f"{r['devices']:>8} {r['images_per_s']:>8.1f} "
              f"{1e3 * r['data_s'] / n:>8.1f} {1e3 * r['step_s'] / n:>8.1f} "
              f"{1e3 * r['sync_s'] / n:>8.1f} {r['train_compile_s']:>9.1f}")
    print(f"4-device / 1-device images/s: "
          f"{four['images_per_s'] / one['images_per_s']:.2f}")
    g1, g4 = one["eval_s_per_subnet_g1"], one["eval_s_per_subnet_g4"]
    gm = one["eval_s_per_subnet_g1_masked"]
    print(f"evaluation subnets/minute, one per call: default "
          f"({one['single_subnet_mode']}) {60 / g1:.1f}, masked {60 / gm:.1f}; "
          f"ratio default/masked {gm / g1:.2f}x")
    print(f"evaluation ({one['eval_images']} val images + 2000 calibration, "
          f"1 device): {g1:.3f} s/subnet one per call, {g4:.3f} s/subnet "
          f"4 per call (vmap); ratio {g4 / g1:.2f}; of which BN "
          f"re-calibration {one['recal_s_per_subnet']:.3f} s/subnet")
    if args.compare_exec_modes:
        sw = run_child(1, args, "train", "switch")
        print(f"training step, 1 device: masked {one['images_per_s']:.1f} img/s "
              f"(compile {one['train_compile_s']:.1f} s), switch "
              f"{sw['images_per_s']:.1f} img/s (compile "
              f"{sw['train_compile_s']:.1f} s); switch/masked "
              f"{sw['images_per_s'] / one['images_per_s']:.2f}x")
    print(f"load average {os.getloadavg()}")


if __name__ == "__main__":
    main()
