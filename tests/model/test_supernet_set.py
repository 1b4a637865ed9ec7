"""The one-supernet-per-width directory layout (nat_jax.model.supernet_set)."""

import jax
import numpy as np
import pytest

from nat_jax.model import supernet as supernet_lib
from nat_jax.model import supernet_set
from nat_jax.space import search_space as ss


@pytest.fixture(scope="module")
def two_widths(tmp_path_factory):
    space = ss.get_space("small")
    nets = {w: supernet_lib.init_supernet(space, w, 10, jax.random.key(i))
            for i, w in enumerate(space.widths)}
    d = tmp_path_factory.mktemp("set")
    supernet_set.save_all(d / "supernet", nets)
    return d, nets


def test_layout_and_widths(two_widths):
    d, nets = two_widths
    assert sorted(p.name for p in (d / "supernet").iterdir()) == ["w1.0", "w1.2"]
    # the workdir, the set folder and one width's folder all resolve
    assert supernet_set.widths(d) == (1.0, 1.2)
    assert supernet_set.widths(d / "supernet") == (1.0, 1.2)
    assert supernet_set.widths(d / "supernet" / "w1.2") == (1.2,)


def test_load_width_reads_back_that_width(two_widths):
    d, nets = two_widths
    for w, (model, variables) in nets.items():
        m, v = supernet_set.load_width(d, w)
        assert m.width == w and m.space == model.space
        a = jax.tree.leaves(variables["params"])
        b = jax.tree.leaves(v["params"])
        assert len(a) == len(b)
        assert all(np.array_equal(x, y) for x, y in zip(a, b))
    # the two widths are different weight sets (stem widths differ)
    shapes = {w: jax.tree.map(np.shape, nets[w][1]["params"]) for w in nets}
    assert shapes[1.0] != shapes[1.2]


def test_errors_name_what_exists(two_widths, tmp_path):
    d, _ = two_widths
    with pytest.raises(ValueError, match=r"holds widths \[1.0, 1.2\]"):
        supernet_set.load_width(d, 1.4)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no supernet"):
        supernet_set.widths(tmp_path / "empty")
    with pytest.raises(ValueError, match="does not exist"):
        supernet_set.widths(tmp_path / "missing")
    model, variables = two_widths[1][1.0]
    with pytest.raises(ValueError, match="given as width"):
        supernet_set.save_all(tmp_path / "x", {1.2: (model, variables)})
