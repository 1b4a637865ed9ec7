"""Multi-host data parallelism, exercised: two processes on this machine.

Two processes, one CPU device each, join one JAX job
(`jax.distributed.initialize` with a coordinator on 127.0.0.1 and a free
port, JAX's gloo CPU collectives), build the global ("data",) mesh of both
devices, run data-parallel adaptation steps (`adaptation.adapt`) and an
evaluation (`evaluation.evaluate_subnets`). The oracle is the one-process
run of the same program on two local CPU devices: the weights, the BN
statistics and the top-1/top-5 counts must be the same (the README's
multi-host instructions are the ones `_CHILD` follows).
"""

import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

# Slow: whole runs or expensive shared fixtures (over ~30 s on 2 cores).
pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_CHILD = textwrap.dedent("""
    import sys
    import jax
    n_proc, pid, port, out = int(sys.argv[1]), int(sys.argv[2]), *sys.argv[3:5]
    jax.config.update("jax_platforms", "cpu")
    if n_proc > 1:  # the README's multi-host recipe, with a local coordinator
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}",
                                   num_processes=n_proc, process_id=pid,
                                   initialization_timeout=120)
    else:
        jax.config.update("jax_num_cpu_devices", 2)
    import dataclasses
    import numpy as np
    from nat_jax.train import adaptation as ad
    from nat_jax.data import datasets as data
    from nat_jax.data import pipeline
    from nat_jax.runtime import sharding
    from nat_jax.model import supernet
    from nat_jax.train import evaluation as ev
    from nat_jax.space import search_space as ss

    assert jax.device_count() == 2 and jax.process_count() == n_proc
    space = ss.SearchSpace.tiny()
    model, variables = supernet.init_supernet(space, 1.0, 10, jax.random.key(0))
    ds = data.load(data.EMBEDDED)
    mesh = sharding.data_mesh()
    genes = np.array(space.sample(jax.random.key(1), 20))
    genes[:, 0] = 0  # one resolution: one compile of each program
    genes[:, 1] = 0  # the one supernet's width (1.0)
    probs = ad.gene_distribution(space, genes, floor=0.0)
    cfg = ad.AdaptConfig()
    loader = pipeline.TrainLoader(ds.train, 8, seed=0)  # same global batch
    arrays_in = jax.device_get(variables)
    state = ad.create_train_state(model, variables, cfg, 100, key=3)
    state, m = ad.adapt(state, model, loader, probs, 3, cfg, mesh=mesh)
    trained = state.variables()
    val = dataclasses.replace(ds.val, indices=ds.val.indices[:100])
    ecfg = ev.EvalConfig(batch_size=32, calib_images=32, calib_batch_size=16)
    res = ev.evaluate_subnets(model, trained, list(genes[:2]), space, val,
                              ds.train, ecfg, mesh=mesh)
    leaves = jax.tree_util.tree_leaves_with_path(trained)
    arrays = {jax.tree_util.keystr(p): sharding.to_host(v) for p, v in leaves}
    arrays["counts"] = np.array([[r["top1"], r["top5"], r["n"]] for r in res])
    arrays["loss"] = np.array(m["loss"])
    before = jax.tree.leaves(arrays_in)
    after = [sharding.to_host(v) for v in jax.tree.leaves(trained)]
    arrays["moved"] = np.array(sum(float(np.abs(a - b).sum())
                                   for a, b in zip(after, before)))
    np.savez(out, **arrays)
    print("CHILD DONE", pid, flush=True)
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(n_proc, pid, port, out):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
    env.pop("XLA_FLAGS", None)
    return subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(n_proc), str(pid), str(port), out],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True)


def _finish(procs, timeout):
    """Wait for every process; kill all of them on the first failure/timeout."""
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=timeout)[0])
            assert p.returncode == 0, "\n".join(x[-3000:] for x in logs)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    return logs


@pytest.mark.slow
def test_two_processes_equal_one_process(tmp_path):
    port = _free_port()
    outs = [str(tmp_path / f"host{i}.npz") for i in range(2)]
    hosts = [_start(2, i, port, outs[i]) for i in range(2)]
    _finish(hosts, timeout=420)
    single = str(tmp_path / "single.npz")
    _finish([_start(1, 0, 0, single)], timeout=420)
    want = np.load(single)
    assert want["counts"][:, 2].tolist() == [100, 100]
    assert any("batch_stats" in k for k in want.files)
    assert float(want["moved"]) > 0  # the steps changed the weights
    for out in outs:  # each host holds the full replicated result
        got = np.load(out)
        assert sorted(got.files) == sorted(want.files)
        np.testing.assert_array_equal(got["counts"], want["counts"])
        for k in want.files:
            # bit for bit: a 2-device all-reduce sums the same two terms
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)
