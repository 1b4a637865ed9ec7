"""OFA's re-ordering of the expanded ("middle") channels by importance.

Before each elastic-expand phase of progressive shrinking, OFA sorts the
middle channels of every inverted-bottleneck block so that the most important
ones come first (`re_organize_middle_weights` in the `ofa` package's
`dynamic_layers.py`; Cai et al., ICLR 2020, Sec. 3.2 "elastic width": "we
first analyze the importance of each channel based on its L1 norm ... we
sort the channels according to their importance"). The masked supernet keeps
the FIRST `mid` middle channels of a smaller expand ratio, so after sorting a
smaller ratio keeps the important ones.

Per block slot (names of `nat_jax.model.elastic_block.ElasticBlock`):

* importance of middle channel c = sum |project_kernel[:, :, c, :]| (the L1
  norm of the projection weights reading it);
* `expand_stage` s > 0 keeps the groups of the s + 1 largest ratios: with
  the middle widths m_0 > m_1 > ... of the ratios in descending order, a
  channel's ring is the number of i in 1..s with c >= m_i, and channels are
  sorted by (ring ascending, importance descending). OFA adds offsets of
  -1e5 per ring to the float32 importance for the same effect; the exact
  two-key sort here does not depend on float32 rounding of those offsets;
* the permutation is applied to the expansion conv outputs and its BN, the
  depthwise kernel channels and its BN (the kernel-transform matrices are
  shared by all channels and stay as they are), the SE reduce inputs, the SE
  expand outputs and bias, and the projection inputs;
* then the SE hidden channels are sorted by the L1 norm of the SE expand
  weights reading them (descending): SE reduce outputs and bias, SE expand
  inputs.

Every permutation is applied consistently to both sides of the channel, so
the largest subnet computes the same function (tests/model/test_reorder.py).
"""

from __future__ import annotations

import numpy as np

from nat_jax.space import search_space as ss


def middle_order(project_kernel: np.ndarray, widths_desc: tuple[int, ...],
                 expand_stage: int = 0) -> np.ndarray:
    """The new order of a block's middle channels (OFA's importance sort).

    Args:
      project_kernel: float[1, 1, M, C_out] projection kernel (M middle
        channels, the largest expand ratio's).
      widths_desc: the middle widths of the expand ratios in descending
        order (widths_desc[0] == M).
      expand_stage: OFA's `expand_ratio_stage`: the groups of the
        `expand_stage + 1` largest ratios keep their members.

    Returns:
      int64[M]: new channel i is old channel order[i].
    """
    importance = np.abs(np.asarray(project_kernel, np.float64)).sum(axis=(0, 1, 3))
    m = importance.shape[0]
    if not 0 <= expand_stage < len(widths_desc):
        raise ValueError(f"expand_stage must be in 0..{len(widths_desc) - 1}, got "
                         f"{expand_stage}.")
    if widths_desc[0] != m:
        raise ValueError(f"The largest middle width {widths_desc[0]} does not match "
                         f"the projection's {m} input channels.")
    ring = np.zeros(m, np.int64)
    for i in range(1, expand_stage + 1):
        ring += np.arange(m) >= widths_desc[i]
    return np.lexsort((-importance, ring))


def se_order(se_expand_kernel: np.ndarray) -> np.ndarray:
    """New order of the SE hidden channels: L1 of the SE expand weights, desc.

    Args:
      se_expand_kernel: float[1, 1, S, M].

    Returns:
      int64[S]: new hidden channel i is old channel order[i].
    """
    importance = np.abs(np.asarray(se_expand_kernel, np.float64)).sum(axis=(0, 1, 3))
    return np.argsort(-importance, kind="stable")


def _take(x, idx, axis):
    return np.take(np.asarray(x), idx, axis=axis)


def reorder_block(params: dict, stats: dict, widths_desc: tuple[int, ...],
                  expand_stage: int = 0) -> tuple[dict, dict]:
    """One elastic block's params and batch_stats with sorted middle channels.

    Args:
      params, stats: the block's entries of the supernet's "params" and
        "batch_stats" (numpy or jax arrays; not modified).
      widths_desc, expand_stage: see `middle_order`.

    Returns:
      (params, stats) as new dicts of numpy arrays.
    """
    idx = middle_order(params["project_kernel"], widths_desc, expand_stage)
    p = {k: v for k, v in params.items()}
    s = {k: dict(v) for k, v in stats.items()}
    p["expand_kernel"] = _take(p["expand_kernel"], idx, 3)
    p["project_kernel"] = _take(p["project_kernel"], idx, 2)
    for bn in ("expand_bn", "depthwise_bn"):
        p[bn] = {q: _take(v, idx, 0) for q, v in p[bn].items()}
        s[bn] = {q: _take(v, idx, 0) for q, v in s[bn].items()}
    dw = dict(p["depthwise"])
    dw["kernel"] = _take(dw["kernel"], idx, 3)
    p["depthwise"] = dw
    if "se_expand_kernel" in p:
        p["se_reduce_kernel"] = _take(p["se_reduce_kernel"], idx, 2)
        p["se_expand_kernel"] = _take(p["se_expand_kernel"], idx, 3)
        p["se_expand_bias"] = _take(p["se_expand_bias"], idx, 0)
        sidx = se_order(p["se_expand_kernel"])
        p["se_expand_kernel"] = _take(p["se_expand_kernel"], sidx, 2)
        p["se_reduce_kernel"] = _take(p["se_reduce_kernel"], sidx, 3)
        p["se_reduce_bias"] = _take(p["se_reduce_bias"], sidx, 0)
    return p, s


def reorder_middle(variables: dict, space: ss.SearchSpace, width: float,
                   expand_stage: int = 0) -> dict:
    """OFA's `re_organize_middle_weights(expand_stage)` on supernet variables.

    Pure: returns new {"params", "batch_stats"} (numpy leaves in the blocks,
    the rest shared with `variables`); the largest subnet's function is
    unchanged.

    Args:
      variables: {"params", "batch_stats"} of a `nat_jax.model.supernet.Supernet`
        of `space` at `width`.
      space, width: the supernet's space and width multiplier.
      expand_stage: 0 before the first expand phase (plain sort); s > 0
        before the phase that adds the (s + 2)-th largest ratio (the groups
        of the s + 1 largest ratios, trained so far, keep their members).
    """
    params = dict(variables["params"])
    stats = dict(variables["batch_stats"])
    expands = sorted(space.expands, reverse=True)
    for slot in space.blocks(width):
        name = f"block_{slot.index + 1}"
        widths = tuple(space.mid_channels(slot.c_in, e) for e in expands)
        params[name], stats[name] = reorder_block(params[name], stats[name],
                                                  widths, expand_stage)
    return {**variables, "params": params, "batch_stats": stats}
