"""The Once-for-All MobileNetV3 search space and NAT's encodings.

A network is described three ways:

* `Arch`: a frozen value (resolution, width, per-block kernel and expand, per-stage
  depth). Blocks past a stage's depth are inactive and hold 0 in `ks`/`e`, so
  equal networks compare equal.
* the NAT genotype (paper Fig. 2b): integers `[resolution index, width index,
  layer genes]`, one layer gene per block slot; 0 means the slot is skipped,
  otherwise `1 + kernel_index + len(kernels) * expand_index`.
* traced arrays `{"ks", "e", "d"}` (int32) that the masked supernet consumes, so
  one compiled program serves every subnet.

The printed form of a subnet, which every entry point accepts
(`parse_arch` / `load_arch`) and every report prints (`Arch.to_encoding`), is
NAT's `net.encoding` string generalised to any space: the genotype in the
registered space that the given one restricts (`base_space`; so a run space
with its width pinned prints the same string as the full space), written as
two digits of resolution index, one of width index and one per layer gene (23
digits in OFA's space, 7 in the tiny one). A space whose choices do not fit one
digit each writes the same genes joined by "-".

Other external formats: OFA's `set_active_subnet(ks, e, d)` lists (20
per-block entries, 5 depths), NAT's compact `net.subnet` JSON (per-active-block
lists of length `sum(d)`) and OFA's `net.config`. Every function that reads or
writes one takes the `SearchSpace` explicitly; `get_space(name)` is the
registry of named spaces the entry points share.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import re
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """OFA/TF channel rounding: nearest multiple of `divisor`, never 10% below v."""
    min_value = divisor if min_value is None else min_value
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return int(new_v)


@dataclasses.dataclass(frozen=True)
class NetSpec:
    """Macro skeleton of an OFA MobileNetV3 supernet, in width-1.0 channels."""

    first_channels: int = 16
    first_block_channels: int = 16
    stage_channels: tuple[int, ...] = (24, 40, 80, 112, 160)
    stage_strides: tuple[int, ...] = (2, 2, 2, 1, 2)
    stage_acts: tuple[str, ...] = ("relu", "relu", "h_swish", "h_swish", "h_swish")
    stage_se: tuple[bool, ...] = (False, True, False, True, True)
    final_expand: int = 960
    feature_mix: int = 1280

    def __post_init__(self):
        n = len(self.stage_channels)
        for name in ("stage_strides", "stage_acts", "stage_se"):
            if len(getattr(self, name)) != n:
                raise ValueError(
                    f"NetSpec.{name} must have {n} entries (one per stage)."
                )
        bad = set(self.stage_acts) - {"relu", "h_swish"}
        if bad:
            raise ValueError(
                f"Unknown activation(s) {sorted(bad)}; allowed: relu, h_swish."
            )


@dataclasses.dataclass(frozen=True)
class Channels:
    """Channel widths of one supernet after the width multiplier is applied."""

    first: int
    first_block: int
    stages: tuple[int, ...]
    final_expand: int
    feature_mix: int


@dataclasses.dataclass(frozen=True)
class BlockSlot:
    """One elastic block slot of the supernet's layout (see `SearchSpace.blocks`).

    Attributes:
      index: slot number 0..num_blocks-1 (OFA's `blocks.{index + 1}`).
      stage, position: the stage and the slot's position in it (0-based).
      c_in, c_out: channels at the supernet's width.
      stride: 2 for the first slot of a downsampling stage, else 1.
      act: "relu" or "h_swish".
      use_se: squeeze-and-excitation in this stage.
      skippable: the slot can be skipped (position >= the smallest depth).
    """

    index: int
    stage: int
    position: int
    c_in: int
    c_out: int
    stride: int
    act: str
    use_se: bool
    skippable: bool


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """An OFA MobileNetV3-style elastic search space (frozen, hashable).

    The default is the paper's space: 5 stages of up to 4 blocks, kernels
    {3, 5, 7}, expand ratios {3, 4, 6}, depths {2, 3, 4}, 17 resolutions
    192..256 and width multipliers {1.0, 1.2}.
    """

    kernels: tuple[int, ...] = (3, 5, 7)
    expands: tuple[int, ...] = (3, 4, 6)
    depths: tuple[int, ...] = (2, 3, 4)
    resolutions: tuple[int, ...] = tuple(range(192, 257, 4))
    widths: tuple[float, ...] = (1.0, 1.2)
    net: NetSpec = NetSpec()

    def __post_init__(self):
        for name in ("kernels", "expands", "depths", "resolutions", "widths"):
            vals = getattr(self, name)
            if not vals or list(vals) != sorted(set(vals)):
                raise ValueError(
                    f"SearchSpace.{name} must be non-empty, sorted, unique."
                )
        if any(k % 2 == 0 for k in self.kernels):
            raise ValueError("Kernel sizes must be odd.")
        if self.depths[0] < 1:
            raise ValueError("Every stage needs at least one block (depths >= 1).")

    # ----------------------------------------------------------------- sizes
    @property
    def num_stages(self) -> int:
        return len(self.net.stage_channels)

    @property
    def max_depth(self) -> int:
        return self.depths[-1]

    @property
    def min_depth(self) -> int:
        return self.depths[0]

    @property
    def num_blocks(self) -> int:
        return self.num_stages * self.max_depth

    @property
    def num_ops(self) -> int:
        """Number of (kernel, expand) choices; nonzero layer genes are 1..num_ops."""
        return len(self.kernels) * len(self.expands)

    @property
    def num_genes(self) -> int:
        return 2 + self.num_blocks

    def channels(self, width: float) -> Channels:
        """Stage widths for `width` (OFA's make_divisible rounding)."""
        self.width_index(width)
        n = self.net
        return Channels(
            first=make_divisible(n.first_channels * width),
            first_block=make_divisible(n.first_block_channels * width),
            stages=tuple(make_divisible(c * width) for c in n.stage_channels),
            final_expand=make_divisible(n.final_expand * width),
            feature_mix=make_divisible(n.feature_mix * width),
        )

    def blocks(self, width: float) -> tuple[BlockSlot, ...]:
        """The elastic block slots in order: the one description of the layout
        that the supernet, the static subnet, the counters and the latency
        table all walk."""
        ch = self.channels(width)
        out, c_in = [], ch.first_block
        for s, c_out in enumerate(ch.stages):
            for j in range(self.max_depth):
                out.append(BlockSlot(
                    index=s * self.max_depth + j, stage=s, position=j, c_in=c_in,
                    c_out=c_out, stride=self.net.stage_strides[s] if j == 0 else 1,
                    act=self.net.stage_acts[s], use_se=self.net.stage_se[s],
                    skippable=j >= self.min_depth))
                c_in = c_out
        return tuple(out)

    # ------------------------------------------------------------ JSON
    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict; `SearchSpace.from_json` inverts it."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "SearchSpace":
        """The space written by `to_json` (ValueError if malformed)."""
        try:
            net = NetSpec(**{k: tuple(v) if isinstance(v, list) else v
                             for k, v in d["net"].items()})
            rest = {k: tuple(v) for k, v in d.items() if k != "net"}
            return cls(net=net, **rest)
        except (KeyError, TypeError, AttributeError) as err:
            raise ValueError(f"Corrupt search space JSON: {err!r}.") from None

    def mid_channels(self, c_in: int, expand: int) -> int:
        return make_divisible(round(c_in * expand), 8)

    # ------------------------------------------------------------ indices
    def width_index(self, width: float) -> int:
        for i, w in enumerate(self.widths):
            if abs(w - float(width)) < 1e-9:
                return i
        raise ValueError(
            f"Unknown width multiplier {width!r}; allowed: {list(self.widths)}."
        )

    def resolution_index(self, resolution: int) -> int:
        if int(resolution) != resolution or int(resolution) not in self.resolutions:
            raise ValueError(
                f"Resolution {resolution!r} is not in the search space; allowed: "
                f"{list(self.resolutions)}."
            )
        return self.resolutions.index(int(resolution))

    def op_gene(self, kernel: int, expand: int) -> int:
        """Nonzero layer gene of a (kernel, expand) choice."""
        ki = self.kernels.index(kernel)
        ei = self.expands.index(expand)
        return 1 + ki + len(self.kernels) * ei

    # ------------------------------------------------------------- bounds
    @property
    def lower_bounds(self) -> np.ndarray:
        stage = [1] * self.min_depth + [0] * (self.max_depth - self.min_depth)
        return np.array([0, 0] + stage * self.num_stages, dtype=np.int32)

    @property
    def upper_bounds(self) -> np.ndarray:
        up = [len(self.resolutions) - 1, len(self.widths) - 1]
        return np.array(up + [self.num_ops] * self.num_blocks, dtype=np.int32)

    # ------------------------------------------------------ genotype ops
    def canonicalize(self, genes: jax.Array | np.ndarray) -> jax.Array | np.ndarray:
        """Move each stage's skipped slots (zeros) to its end, keeping order.

        Several genotypes decode to one network; this maps all of them to one.
        Works on `[..., num_genes]`; NumPy in gives NumPy out, otherwise jax.numpy
        (usable under `jit`).
        """
        xp = _xp(genes)
        genes = xp.asarray(genes).astype(xp.int32)
        head, layers = genes[..., :2], genes[..., 2:]
        layers = layers.reshape(layers.shape[:-1] + (self.num_stages, self.max_depth))
        order = xp.argsort(layers == 0, axis=-1, stable=True)
        layers = xp.take_along_axis(layers, order, axis=-1)
        flat = layers.reshape(head.shape[:-1] + (self.num_blocks,))
        return xp.concatenate([head, flat], axis=-1)

    def validate_genes(self, genes: Sequence[int] | np.ndarray) -> np.ndarray:
        """Check one genotype; returns it as int32 numpy or raises ValueError."""
        g = np.asarray(genes)
        if g.ndim != 1 or g.shape[0] != self.num_genes:
            raise ValueError(
                f"Genotype must have {self.num_genes} integers, got shape {g.shape}."
            )
        if not np.all(np.equal(np.mod(g, 1), 0)):
            raise ValueError(f"Genotype must be integers, got {g.tolist()}.")
        g = g.astype(np.int32)
        lo, up = self.lower_bounds, self.upper_bounds
        names = ["resolution index", "width index"] + [
            f"layer gene of stage {s} slot {j}"
            for s in range(self.num_stages)
            for j in range(self.max_depth)
        ]
        for i in np.flatnonzero((g < lo) | (g > up)):
            raise ValueError(
                f"Genotype position {i} ({names[i]}) is {g[i]}; "
                f"allowed {lo[i]}..{up[i]}."
            )
        depth = (g[2:].reshape(self.num_stages, self.max_depth) != 0).sum(-1)
        for s, d in enumerate(depth):
            if d not in self.depths:
                raise ValueError(
                    f"Stage {s} has depth {d}; allowed depths: {list(self.depths)}."
                )
        return g

    def sample(self, key: jax.Array, n: int, p_skip: float = 1 / 3) -> jax.Array:
        """Sample `n` canonical genotypes uniformly, int32[n, num_genes].

        Mandatory slots take a uniform (kernel, expand) choice; optional slots
        are skipped with probability `p_skip` (the authors' 1/3, so that
        shallow stages are not rare), else take a uniform choice.
        """
        k_head, k_ops, k_skip = jax.random.split(key, 3)
        up = jnp.asarray(self.upper_bounds)
        lo = jnp.asarray(self.lower_bounds)
        head = jax.random.randint(k_head, (n, 2), 0,
                                  jnp.broadcast_to(up[:2] + 1, (n, 2)))
        ops = jax.random.randint(k_ops, (n, self.num_blocks), 1, self.num_ops + 1)
        optional = (lo[2:] == 0)[None, :]
        skip = jax.random.bernoulli(k_skip, p_skip, (n, self.num_blocks)) & optional
        layers = jnp.where(skip, 0, ops)
        genes = jnp.concatenate([head, layers], axis=-1).astype(jnp.int32)
        return self.canonicalize(genes)

    def genes_to_arrays(self, genes: jax.Array | np.ndarray) -> dict[str, jax.Array]:
        """Traced form of (a batch of) genotypes: {"ks", "e", "d"}, int32.

        Inactive blocks get kernel 0 and expand 0. Resolution and width are
        not included: they select shapes / weights and are static. NumPy in
        gives NumPy out.
        """
        xp = _xp(genes)
        genes = self.canonicalize(genes)
        layers = genes[..., 2:]
        active = layers > 0
        op = xp.maximum(layers - 1, 0)
        ks = xp.asarray(self.kernels, xp.int32)[op % len(self.kernels)]
        es = xp.asarray(self.expands, xp.int32)[op // len(self.kernels)]
        shape = active.shape[:-1] + (self.num_stages, self.max_depth)
        d = active.reshape(shape).sum(-1)
        return {
            "ks": xp.where(active, ks, 0).astype(xp.int32),
            "e": xp.where(active, es, 0).astype(xp.int32),
            "d": d.astype(xp.int32),
        }

    # --------------------------------------------------- Arch conversions
    def encode(self, arch: "Arch") -> np.ndarray:
        """Canonical genotype of `arch`, int32[num_genes]."""
        arch.validate(self)
        layers = []
        for s in range(self.num_stages):
            for j in range(self.max_depth):
                b = s * self.max_depth + j
                layers.append(
                    self.op_gene(arch.ks[b], arch.e[b]) if j < arch.d[s] else 0
                )
        head = [self.resolution_index(arch.resolution), self.width_index(arch.width)]
        return np.array(head + layers, dtype=np.int32)

    def decode(self, genes: Sequence[int] | np.ndarray) -> "Arch":
        """Arch of a genotype (any of its non-canonical forms)."""
        g = self.canonicalize(self.validate_genes(genes))
        arrays = self.genes_to_arrays(g)
        return Arch(
            resolution=self.resolutions[int(g[0])],
            width=self.widths[int(g[1])],
            ks=tuple(int(v) for v in arrays["ks"]),
            e=tuple(int(v) for v in arrays["e"]),
            d=tuple(int(v) for v in arrays["d"]),
        )

    def min_arch(
        self, resolution: int | None = None, width: float | None = None
    ) -> "Arch":
        return self._uniform_arch(
            self.kernels[0], self.expands[0], self.depths[0], resolution, width
        )

    def max_arch(
        self, resolution: int | None = None, width: float | None = None
    ) -> "Arch":
        return self._uniform_arch(
            self.kernels[-1], self.expands[-1], self.depths[-1], resolution, width
        )

    def _uniform_arch(self, k, e, d, resolution, width) -> "Arch":
        resolution = self.resolutions[-1] if resolution is None else resolution
        width = self.widths[0] if width is None else width
        return Arch.from_ofa(
            [k] * self.num_blocks,
            [e] * self.num_blocks,
            [d] * self.num_stages,
            resolution,
            width,
            space=self,
        )

    @classmethod
    def tiny(cls) -> "SearchSpace":
        """A two-stage space for fast tests (small channels, resolutions 32..48,
        two width multipliers as the paper's space, so tests exercise one
        supernet per width)."""
        return cls(
            depths=(1, 2),
            resolutions=(32, 40, 48),
            widths=(1.0, 1.2),
            net=NetSpec(
                first_channels=8,
                first_block_channels=8,
                stage_channels=(16, 24),
                stage_strides=(2, 2),
                stage_acts=("relu", "h_swish"),
                stage_se=(False, True),
                final_expand=64,
                feature_mix=96,
            ),
        )


    @classmethod
    def small(cls) -> "SearchSpace":
        """OFA's 5 stages x 4 slots (the paper's 22-gene genotype) at small
        channels for 24..32 px inputs, two widths: the space of the shipped
        Fashion-MNIST supernet (experiments/configs/pretrain.py). The last
        stage keeps stride 1 (OFA: 2), so 24-32 px inputs end at 2x2."""
        return cls(resolutions=(24, 28, 32), widths=(1.0, 1.2), net=NetSpec(
            first_channels=8, first_block_channels=8,
            stage_channels=(16, 24, 32, 32, 40), stage_strides=(2, 2, 2, 1, 1),
            stage_acts=("relu", "relu", "h_swish", "h_swish", "h_swish"),
            stage_se=(False, True, False, True, True),
            final_expand=160, feature_mix=224))


OFA_MBV3 = SearchSpace()

# The named spaces every entry point accepts (--space / config.space).
_SPACES = {"ofa_mbv3": OFA_MBV3, "tiny": SearchSpace.tiny(),
           "small": SearchSpace.small()}
SPACE_NAMES = tuple(_SPACES)


def get_space(name: str) -> SearchSpace:
    """The registered search space called `name` (see `SPACE_NAMES`)."""
    if name not in _SPACES:
        raise ValueError(
            f"Unknown search space {name!r}; known: {list(SPACE_NAMES)}."
        )
    return _SPACES[name]


def base_space(space: SearchSpace) -> SearchSpace:
    """The registered space that `space` restricts, else `space` itself.

    `space` restricts a registered one when it equals it up to a subset of its
    resolutions and widths (as a run pins its width). Encodings are written in
    the base space, so they do not depend on such a restriction.
    """
    for base in _SPACES.values():
        if (
            set(space.resolutions) <= set(base.resolutions)
            and set(space.widths) <= set(base.widths)
            and dataclasses.replace(
                base, resolutions=space.resolutions, widths=space.widths
            )
            == space
        ):
            return base
    return space


def space_name(space: SearchSpace) -> str | None:
    """The registered name of `base_space(space)`, or None for a custom space."""
    base = base_space(space)
    return next((n for n, s in _SPACES.items() if s == base), None)


@dataclasses.dataclass(frozen=True)
class Arch:
    """One subnet of a SearchSpace. Inactive blocks hold 0 in `ks` and `e`."""

    resolution: int
    width: float
    ks: tuple[int, ...]
    e: tuple[int, ...]
    d: tuple[int, ...]

    @classmethod
    def from_ofa(
        cls,
        ks: Sequence[int],
        e: Sequence[int],
        d: Sequence[int],
        resolution: int,
        width: float,
        space: SearchSpace,
    ) -> "Arch":
        """From OFA's `set_active_subnet` lists: per-block ks/e, per-stage d.

        `space` is required: e.g. `Arch.from_ofa(ks, e, d, 224, 1.0, OFA_MBV3)`.
        """
        d = _int_list(d, "d")
        if len(d) != space.num_stages:
            raise ValueError(
                f"d must have {space.num_stages} entries (one per stage), got {len(d)}."
            )
        for name, vals in (("ks", ks), ("e", e)):
            if len(vals) != space.num_blocks:
                raise ValueError(
                    f"{name} must have {space.num_blocks} per-block entries, got "
                    f"{len(vals)} (a compact NAT list of sum(d) entries? use "
                    f"Arch.from_nat_subnet)."
                )
        ks, e = _int_list(ks, "ks"), _int_list(e, "e")
        active = [j < d[s] for s in range(len(d)) for j in range(space.max_depth)]
        arch = cls(
            resolution=int(resolution),
            width=float(width),
            ks=tuple(k if a else 0 for k, a in zip(ks, active)),
            e=tuple(x if a else 0 for x, a in zip(e, active)),
            d=tuple(d),
        )
        arch.validate(space)
        return arch

    @classmethod
    def from_nat_subnet(cls, cfg: Mapping[str, Any], space: SearchSpace) -> "Arch":
        """From NAT's `net.subnet` dict (compact or padded ks/e; keys r, w optional).

        Compact lists have one entry per active block (length sum(d)) and are
        padded per stage; per-block lists (length num_blocks) are taken as is.
        """
        for key in ("ks", "e", "d"):
            if key not in cfg:
                raise ValueError(
                    f"net.subnet is missing key {key!r}; it needs ks, e, d (and r, w)."
                )
        d = _int_list(cfg["d"], "d")
        if len(d) != space.num_stages:
            raise ValueError(f"d must have {space.num_stages} entries, got {len(d)}.")
        resolution = cfg.get("r", cfg.get("resolution", space.resolutions[-1]))
        width = cfg.get("w", cfg.get("width", space.widths[0]))
        ks, e = list(cfg["ks"]), list(cfg["e"])
        if len(ks) == space.num_blocks and len(e) == space.num_blocks:
            return cls.from_ofa(ks, e, d, resolution, width, space)
        for name, vals in (("ks", ks), ("e", e)):
            if len(vals) != sum(d):
                raise ValueError(
                    f"Compact {name} has {len(vals)} entries but sum(d) = {sum(d)} "
                    f"(per-block lists need {space.num_blocks})."
                )
        pad_ks, pad_e, i = [], [], 0
        for depth in d:
            n = min(depth, space.max_depth)
            pad_ks += ks[i : i + n] + [0] * (space.max_depth - n)
            pad_e += e[i : i + n] + [0] * (space.max_depth - n)
            i += n
        return cls.from_ofa(pad_ks, pad_e, d, resolution, width, space)

    @classmethod
    def from_encoding(cls, s: str, space: SearchSpace) -> "Arch":
        """From the printed form (see the module docstring; NAT's `net.encoding`
        in OFA's space), read in `base_space(space)` and checked against `space`.
        """
        s = s.strip()
        base = base_space(space)
        if _fits_digits(base):
            n = 3 + base.num_blocks
            if len(s) != n or not s.isdigit():
                raise ValueError(
                    f"An encoding of this space is {n} digits (2 resolution, 1 "
                    f"width, {base.num_blocks} layers); got {s!r}."
                )
            genes = [int(s[0:2]), int(s[2])] + [int(c) for c in s[3:]]
        else:
            parts = s.split("-")
            if len(parts) != base.num_genes or not all(p.isdigit() for p in parts):
                raise ValueError(
                    f"An encoding of this space is {base.num_genes} integers joined "
                    f"by '-'; got {s!r}."
                )
            genes = [int(p) for p in parts]
        return base.decode(genes).validate(space)

    @classmethod
    def from_net_config(
        cls,
        cfg: Mapping[str, Any],
        space: SearchSpace,
        resolution: int | None = None,
    ) -> "Arch":
        """From an OFA-style `net.config` dict (MobileNetV3 with static blocks)."""
        try:
            blocks = cfg["blocks"][1:]
            width = cfg.get("width_mult")
            if width is None:
                first = cfg["first_conv"]["out_channels"]
                width = next(
                    w for w in space.widths if space.channels(w).first == first
                )
            res = cfg.get("resolution", resolution)
            if res is None:
                raise ValueError("net.config has no 'resolution'; pass the resolution.")
            chans = space.channels(width).stages
            ks, e, d = [], [], []
            for c_out in chans:
                stage = [
                    b["conv"] for b in blocks if b["conv"]["out_channels"] == c_out
                ]
                d.append(len(stage))
                ks += [c["kernel_size"] for c in stage] + [0] * (
                    space.max_depth - len(stage)
                )
                e += [c["expand_ratio"] for c in stage] + [0] * (
                    space.max_depth - len(stage)
                )
        except (KeyError, TypeError, StopIteration) as err:
            raise ValueError(
                f"Not an OFA MobileNetV3 net.config of this space: {err!r}."
            )
        return cls.from_ofa(ks, e, d, res, width, space)

    # --------------------------------------------------------------- checks
    def validate(self, space: SearchSpace) -> "Arch":
        space.resolution_index(self.resolution)
        space.width_index(self.width)
        if len(self.d) != space.num_stages:
            raise ValueError(
                f"d must have {space.num_stages} entries, got {len(self.d)}."
            )
        for s, depth in enumerate(self.d):
            if depth not in space.depths:
                raise ValueError(
                    f"d[{s}] = {depth}; allowed depths: {list(space.depths)}."
                )
        for name, vals, allowed in (
            ("ks", self.ks, space.kernels),
            ("e", self.e, space.expands),
        ):
            if len(vals) != space.num_blocks:
                raise ValueError(
                    f"{name} must have {space.num_blocks} entries, got {len(vals)}."
                )
            for b, v in enumerate(vals):
                s, j = divmod(b, space.max_depth)
                if j < self.d[s] and v not in allowed:
                    raise ValueError(
                        f"{name}[{b}] (stage {s} block {j}) = {v}; allowed: "
                        f"{list(allowed)}."
                    )
                if j >= self.d[s] and v != 0:
                    raise ValueError(
                        f"{name}[{b}] belongs to a skipped block and must be 0"
                        f" (use Arch.from_ofa to canonicalise)."
                    )
        return self

    # ------------------------------------------------------------- exports
    def to_ofa(self, space: SearchSpace) -> dict[str, list[int]]:
        """OFA `set_active_subnet` kwargs; skipped blocks get the smallest choice."""
        return {
            "ks": [k or space.kernels[0] for k in self.ks],
            "e": [x or space.expands[0] for x in self.e],
            "d": list(self.d),
        }

    def to_nat_subnet(self, space: SearchSpace) -> dict[str, Any]:
        """NAT's compact `net.subnet` dict (lists of length sum(d))."""
        ks, e = [], []
        for s, depth in enumerate(self.d):
            b = s * space.max_depth
            ks += list(self.ks[b : b + depth])
            e += list(self.e[b : b + depth])
        return {
            "ks": ks,
            "e": e,
            "d": list(self.d),
            "r": self.resolution,
            "w": self.width,
        }

    def to_encoding(self, space: SearchSpace) -> str:
        """The printed form of this subnet (see the module docstring): NAT's
        `net.encoding` in `base_space(space)`; `parse_arch` reads it back."""
        self.validate(space)
        base = base_space(space)
        g = base.encode(self)
        if not _fits_digits(base):
            return "-".join(str(int(x)) for x in g)
        return f"{g[0]:02d}{g[1]}" + "".join(str(int(x)) for x in g[2:])

    def as_arrays(self) -> dict[str, jax.Array]:
        """Traced form for the supernet: int32 ks[num_blocks], e[num_blocks],
        d[num_stages]."""
        return {
            "ks": jnp.asarray(self.ks, jnp.int32),
            "e": jnp.asarray(self.e, jnp.int32),
            "d": jnp.asarray(self.d, jnp.int32),
        }

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))


def _fits_digits(space: SearchSpace) -> bool:
    """NAT's digit string fits: <= 100 resolutions, 10 widths, 9 options."""
    return len(space.resolutions) <= 100 and len(space.widths) <= 10 and (
        space.num_ops <= 9
    )


_ENCODING = re.compile(r"\d+(-\d+)*")


def is_encoding(text: str) -> bool:
    """Whether `text` has the shape of the printed form (digits, or ints joined
    by '-'), as opposed to JSON or a file name."""
    return bool(_ENCODING.fullmatch(text.strip()))


def _xp(x):
    """numpy for NumPy arrays and Python sequences, else jax.numpy."""
    return np if isinstance(x, (np.ndarray, list, tuple)) else jnp


def _int_list(vals: Sequence[Any], name: str) -> list[int]:
    out = []
    for v in vals:
        if isinstance(v, bool) or int(v) != v:
            raise ValueError(f"{name} must hold integers, got {v!r}.")
        out.append(int(v))
    return out


def parse_arch(text: str, space: SearchSpace) -> Arch:
    """An Arch of `space` from its printed form, a JSON gene list, or a JSON dict.

    The printed form is `Arch.to_encoding`'s (NAT's `net.encoding` in OFA's
    space). A gene list is a genotype of `space` itself. Dicts may be a
    `net.subnet` (ks/e/d/r/w, compact or padded), an Arch dump
    (resolution/width/ks/e/d), or an OFA `net.config` (has "blocks").
    """
    text = text.strip()
    if is_encoding(text):
        return Arch.from_encoding(text, space)
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(
            f"Cannot parse architecture {text[:60]!r}: expected an encoding "
            f"(as Arch.to_encoding prints it), a JSON list of {space.num_genes} "
            f"genes, or a net.subnet/net.config JSON ({err.msg})."
        ) from None
    return arch_from_obj(obj, space)


def arch_from_obj(obj: Any, space: SearchSpace) -> Arch:
    """An Arch from a decoded JSON value (see `parse_arch`)."""
    if isinstance(obj, list):
        return space.decode(obj)
    if not isinstance(obj, dict):
        raise ValueError(f"Unsupported architecture JSON of type {type(obj).__name__}.")
    if "blocks" in obj:
        return Arch.from_net_config(obj, space)
    if "resolution" in obj and "ks" in obj:
        return Arch.from_ofa(
            obj["ks"], obj["e"], obj["d"], obj["resolution"], obj["width"], space
        )
    return Arch.from_nat_subnet(obj, space)


def load_arch(value: str | None, space: SearchSpace) -> Arch:
    """An Arch of `space` from a command-line value: inline text (see
    `parse_arch`) or the path of a file holding it (net.subnet, net.config,
    net.encoding, an archive row's encoding)."""
    if value is None or not str(value).strip():
        raise ValueError(
            "An architecture is required: an encoding (as reports print it), a "
            "JSON gene list or dict, or a file holding one."
        )
    text = str(value).strip()
    if text[0] in "[{" or is_encoding(text):
        return parse_arch(text, space)
    path = pathlib.Path(text)
    if not path.is_file():
        raise ValueError(f"{value!r} is neither an encoding nor a file.")
    return parse_arch(path.read_text(), space)
