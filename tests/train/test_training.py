"""The training toolkit (nat_jax/train/training.py): the learning-rate
schedule against its formulas written out, the smoothed cross-entropy,
PyTorch's SGD on a subnet's weights, the non-finite guard."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from nat_jax.runtime import checkpoint as ck
from nat_jax.train import adaptation as ad
from nat_jax.train import training

# ------------------------------------------------------------ schedule


def test_learning_rate_follows_warmup_and_cosine_formulas():
    """W = 10 warm-up steps from 0.1 to 0.4, cosine to 0.02 at T = 30."""
    lr0, peak, end, w, t = 0.1, 0.4, 0.02, 10, 30

    def lr(step):
        return float(training.learning_rate(step, peak, t, warmup_steps=w,
                                            warmup_from=lr0, end=end))
    # by hand: warm-up lr0 + s / W (peak - lr0); cosine end + (peak - end) / 2
    # (1 + cos(pi (s - W) / (T - W)))
    assert lr(0) == pytest.approx(lr0)
    assert lr(5) == pytest.approx(lr0 + 0.5 * (peak - lr0))
    assert lr(w) == pytest.approx(peak)                      # warm-up end
    assert lr(20) == pytest.approx(end + 0.5 * (peak - end))  # cosine half-way
    assert lr(25) == pytest.approx(
        end + 0.5 * (peak - end) * (1 + math.cos(math.pi * 0.75)))
    assert lr(t) == pytest.approx(end) and lr(t + 7) == pytest.approx(end)
    # optax's warmup_cosine_decay_schedule gives the same values
    ref = optax.warmup_cosine_decay_schedule(lr0, peak, w, t, end)
    steps = jnp.arange(t + 3)
    np.testing.assert_allclose(
        [lr(int(s)) for s in steps], np.asarray(ref(steps)), rtol=1e-6)


def test_learning_rate_refuses_a_warmup_as_long_as_the_run():
    with pytest.raises(ValueError, match="0 <= warmup_steps < total_steps"):
        training.learning_rate(0, 0.1, 5, warmup_steps=5)


# ---------------------------------------------------------------- loss

def test_cross_entropy_is_smoothed_targets_against_log_softmax():
    """Oracle: -sum_c t_c log softmax(z)_c, t = (1 - eps) one_hot + eps / C,
    averaged over the batch (numpy, float64)."""
    rng = np.random.default_rng(0)
    z = rng.normal(size=(5, 4)).astype(np.float32)
    y = np.array([0, 3, 1, 1, 2])
    for eps in (0.0, 0.1):
        t = (1 - eps) * np.eye(4)[y] + eps / 4
        zz = z.astype(np.float64)
        log_p = zz - np.log(np.exp(zz).sum(1, keepdims=True))
        want = np.mean(-(t * log_p).sum(1))
        got = float(training.cross_entropy(jnp.asarray(z), jnp.asarray(y), eps))
        np.testing.assert_allclose(got, want, rtol=1e-6)


def test_guard_checks_every_step_one_step_late(tmp_path):
    seen = []

    def m(loss, g):
        return {"loss": jnp.float32(loss), "grad_norm": jnp.float32(g)}

    with ck.TrainCheckpointer(tmp_path) as c:
        guard = training.FiniteGuard(lambda s, ctx: f" on {ctx}", c,
                                     lambda s, host, ctx: seen.append((s, ctx)))
        guard.push(0, m(1.0, 2.0), "a")
        assert seen == []  # held while the next step runs
        guard.push(1, m(1.0, np.inf), "b")  # a finite loss is not enough
        assert seen == [(0, "a")]
        with pytest.raises(training.NonFiniteError, match=(
                r"^Non-finite loss 1\.0 \(gradient norm inf\) at global step 1 on "
                r"b; training stopped, no checkpoint exists yet in .*\.$")):
            guard.push(2, m(1.0, 1.0), "c")
        assert seen == [(0, "a")]
        c.save(3, {"x": np.zeros(2, np.float32)})
        guard = training.FiniteGuard(None, c)
        guard.push(3, m(np.nan, 1.0))
        with pytest.raises(training.NonFiniteError,
                           match=r"step 3; training stopped, checkpoint step 3 "
                                 r"in .* is kept"):
            guard.flush()
    guard = training.FiniteGuard()
    guard.push(0, m(np.inf, 0.0))
    with pytest.raises(RuntimeError, match="nothing was saved"):
        guard.flush()




# ----------------------------------------------------------------- SGD


@pytest.mark.slow
def test_masked_sgd_matches_torch_sgd_on_active_entries():
    """PyTorch SGD (Nesterov, momentum 0.9, decay only on ndim >= 2) where the
    mask is set; masked-out entries and their momentum stay put."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    params = {"w": rng.normal(size=(4, 3)).astype(np.float32),
              "b": rng.normal(size=(3,)).astype(np.float32)}
    grads = [{k: rng.normal(size=v.shape).astype(np.float32)
              for k, v in params.items()} for _ in range(3)]
    cfg = ad.AdaptConfig(weight_decay=0.01)
    mask = {"w": np.ones((4, 3), bool), "b": np.array([True, False, True])}
    p = jax.tree.map(jnp.asarray, params)
    mom = jax.tree.map(jnp.zeros_like, p)
    tw = torch.tensor(params["w"], requires_grad=True)
    tb = torch.tensor(params["b"], requires_grad=True)
    opt = torch.optim.SGD([{"params": [tw], "weight_decay": 0.01},
                           {"params": [tb], "weight_decay": 0.0}], lr=0.05,
                          momentum=0.9, nesterov=True)
    for g in grads:
        p, mom = training.masked_sgd(p, g, mom, mask, 0.05, cfg)
        tw.grad, tb.grad = torch.tensor(g["w"]), torch.tensor(g["b"])
        opt.step()
    p, mom = jax.tree.map(np.asarray, (p, mom))
    np.testing.assert_allclose(p["w"], tw.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(p["b"][[0, 2]], tb.detach().numpy()[[0, 2]],
                               rtol=1e-5, atol=1e-6)
    assert p["b"][1] == params["b"][1] and mom["b"][1] == 0.0




def test_states_made_from_one_key_do_not_share_its_buffer():
    """The train steps donate their state: two states (one per width) made
    from one typed key must each own their key's buffer."""
    key = jax.random.fold_in(jax.random.key(0), 1)
    a, b = training.raw_key(key), training.raw_key(key)
    assert a.unsafe_buffer_pointer() != b.unsafe_buffer_pointer()
    np.testing.assert_array_equal(np.asarray(a), np.asarray(jax.random.key_data(key)))
