"""From a run's config (experiments/configs/transfer.py) to one typed plan.

`plan(config)` is the one place where config fields become library objects:
it validates the config (once), loads the data, builds the objectives and
returns a frozen `TransferPlan` that `transfer.run` and `retarget` read; no
raw ConfigDict travels further. Every field keeps its name from the flag
to the dataclass field (`--config.search.mutation_eta` is
`evolution.SearchConfig.mutation_eta`), and every field is passed
explicitly, so the config file is the only source of defaults (the
dataclass defaults equal it: tests/nat/test_run_config.py).

* `validate(config)`: every field's type and range, without any I/O beyond
  checking that named files exist; one-line ValueErrors that name the flag.
* `plan(config)`: `validate`, then the data and the objectives: everything
  a run needs to know before it writes a file.
* `run_space`, `objective_names`, `complexity_objectives`, `search_config`,
  `adapt_config`, `eval_config`, `final_config`: the pieces, one object each.
"""

from __future__ import annotations

import dataclasses
import numbers
import pathlib
from typing import Any, Callable

import ml_collections

from nat_jax.data import datasets as data
from nat_jax.model import supernet
from nat_jax.nat import task_supernet
from nat_jax.search import evolution, operators, tradeoff
from nat_jax.space import objectives
from nat_jax.space import search_space as ss
from nat_jax.train import adaptation, evaluation

SPACES = ss.SPACE_NAMES
MAX_OBJECTIVES = 12   # NAT handles 2 to 12 objectives (paper section 1)
# search.archive_update: Algorithm 1 line 11 ("paper") or nsganetv2's growth.
ARCHIVE_UPDATES = ("paper", "authors")


def parse_widths(text) -> tuple[float, ...]:
    """(1.0, 1.2) from (1.2, 1.0), [1.0, 1.2] or "1.0,1.2"; () from () or "".

    Raises:
      ValueError: an item that is not a positive number.
    """
    if isinstance(text, numbers.Real) and not isinstance(text, bool):
        text = str(text)
    items = text if isinstance(text, (list, tuple)) else str(text).split(",")
    out = []
    for item in items:
        item = str(item).strip()
        if not item:
            continue
        try:
            w = float(item)
        except ValueError:
            w = -1.0
        if not w > 0.0:
            raise ValueError(f"--config.widths={text!r} is invalid: give positive "
                             f"width multipliers (e.g. --config.widths=1.0,1.2), "
                             f"or () for every width of the space.")
        out.append(w)
    return tuple(sorted(set(out)))


def configured_widths(config) -> tuple[float, ...]:
    """`config.widths` parsed (() = none given); a config.json of an older
    version with the pinned `width` field reads as that one width."""
    if "widths" in config:
        return parse_widths(config.widths)
    if "width" in config:
        return (float(config.width),)
    return ()


def run_space(config) -> ss.SearchSpace:
    """The configured space, with its widths (`config.widths`, default every
    width of the space: the paper searches the width multiplier, Sec. 3.2,
    one supernet per width) and, if `config.resolutions` is set, restricted
    to those resolutions."""
    if config.space not in SPACES:
        raise ValueError(f"Unknown search space {config.space!r}; use "
                         f"--config.space=one of {list(SPACES)}.")
    space = ss.get_space(config.space)
    widths = configured_widths(config) or space.widths
    bad_w = [w for w in widths if w not in space.widths]
    if bad_w:
        raise ValueError(f"--config.widths has {bad_w}, not widths of the "
                         f"{config.space} space; use a subset of "
                         f"{list(space.widths)} (() = all of them).")
    res = tuple(int(r) for r in config.resolutions) or space.resolutions
    bad = sorted(set(res) - set(space.resolutions))
    if bad:
        raise ValueError(f"--config.resolutions has {bad}, not resolutions of the "
                         f"{config.space} space ({list(space.resolutions)}).")
    return dataclasses.replace(space, widths=tuple(widths),
                               resolutions=tuple(sorted(set(res))))


def objective_names(text: str) -> tuple[str, ...]:
    """("top1_error", ...) from "top1_error,madds,...": 2 to 12, no repeats."""
    names = tuple(n.strip() for n in str(text).split(",") if n.strip())
    if not names or names[0] != "top1_error":
        raise ValueError(f"Objectives must start with top1_error, got {text!r} "
                         f"(e.g. top1_error,madds).")
    if not 2 <= len(names) <= MAX_OBJECTIVES:
        raise ValueError(f"NAT takes 2 to {MAX_OBJECTIVES} objectives, got "
                         f"{len(names)}: {list(names)}.")
    if len(set(names)) != len(names):
        raise ValueError(f"Repeated objective in {list(names)}.")
    return names


def complexity_objectives(names, space: ss.SearchSpace, num_classes: int,
                          latency_table: str = "") -> Callable:
    """`objectives.complexity_fn` for the non-error objectives `names`, with
    the "latency" objective (ms) of a latency table.

    `latency_table` is a file from experiments.build_latency_table; "latency"
    is then its prediction for `space` (the table needs the deploy layer,
    which the space layer's `objectives.complexity_fn` cannot import).

    Returns:
      A jittable genes int32[n, num_genes] -> float32[n, len(names)].
    """
    names = tuple(names)
    custom = {}
    if latency_table:
        from nat_jax.deploy import latency  # builds subnet layers: only when used

        _check_latency_file(latency_table)
        custom["latency"] = latency.table_fn(
            latency.LatencyTable.load(latency_table), space)
    elif "latency" in names:
        raise ValueError(_NEEDS_TABLE)
    return objectives.complexity_fn(space, names, num_classes, custom=custom)


_NEEDS_TABLE = ("The latency objective needs a table: add --latency_table=FILE "
                "(build it on the target device with python -m "
                "experiments.build_latency_table).")


def _check_latency_file(path: str) -> None:
    if not pathlib.Path(path).is_file():
        raise ValueError(f"Latency table {path} not found; build one on the target "
                         f"device with python -m experiments.build_latency_table "
                         f"--output={path}")


# ------------------------------------------------------- the typed pieces
@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """Algorithm 1's outer loop: the `search` block's fields that are not
    `evolution.SearchConfig`'s (built by `plan`, validated there).

    Attributes:
      iterations: NAT iterations (Table 2: 30).
      archive_update: "paper" (line 11, `A <- Selection(A u P_t, N)`) or
        "authors" (nsganetv2: K candidates added, A is the whole history).
      archive_size: N, the working archive's size in "paper" mode.
      predictor_train_size: top-ranked members of A the predictor is fitted
        on (Table 2: 100; 0 = every measured subnet).
      archive_init: uniform samples of the initial archive, "authors" mode.
    """

    iterations: int
    archive_update: str
    archive_size: int
    predictor_train_size: int
    archive_init: int


@dataclasses.dataclass(frozen=True)
class AdaptEpochs:
    """How long each adaptation round is: the `adapt` block's fields that are
    not `adaptation.AdaptConfig`'s (built by `plan`, validated there).

    Attributes:
      epochs_per_iter: epochs per NAT iteration (paper: 5).
      warmup_epochs: epochs per width before the first evaluation.
      batch_size: global training batch.
      max_steps_per_epoch: cap on the steps of an epoch (0 = full epochs).
    """

    epochs_per_iter: int
    warmup_epochs: int
    batch_size: int
    max_steps_per_epoch: int

    def steps_per_epoch(self, num_train: int) -> int:
        """Steps of one epoch over `num_train` training images (>= 1)."""
        n = num_train // self.batch_size
        return max(1, min(n, self.max_steps_per_epoch) if self.max_steps_per_epoch
                   else n)


@dataclasses.dataclass(frozen=True)
class FinalConfig:
    """The final choice (Appendix C): `tradeoff.high_tradeoff` picks plus the
    most accurate subnet of the front.

    Attributes:
      num_tradeoff: high trade-off subnets picked.
      tradeoff_variant: "paper", "authors" or "all" (`tradeoff.TRADEOFF_VARIANTS`).
      tradeoff_neighbors: neighbours of the trade-off (0 = the paper's m).
      tradeoff_epsilon: the neighbourhood ball of the "authors" variant.
    """

    num_tradeoff: int = 4
    tradeoff_variant: str = "paper"
    tradeoff_neighbors: int = 0
    tradeoff_epsilon: float = 0.125


@dataclasses.dataclass(frozen=True)
class TransferTask:
    """What a run is about, checked before anything is written.

    Attributes:
      space: the run's search space (its widths, resolutions restricted).
      dataset: the loaded data (train/val/test splits).
      names: objective names, "top1_error" first.
      complexity: genes int32[n, num_genes] -> float32[n, len(names) - 1].
    """

    space: ss.SearchSpace
    dataset: data.Dataset
    names: tuple[str, ...]
    complexity: Callable

    @property
    def num_classes(self) -> int:
        return self.dataset.num_classes


@dataclasses.dataclass(frozen=True)
class TransferPlan:
    """A transfer config resolved once: what every phase of a run reads.

    Attributes:
      config: the config as given (frozen): written to config.json (a rerun
        with another config is refused) and summarised in report.md.
      seed: the run's seed (PRNG keys, loader order, calibration draws).
      task: the space, data and objectives.
      supernet: where the starting supernets come from (`task_supernet`).
      loop: Algorithm 1's outer loop (iterations, archive update and sizes).
      search: one evolutionary search (Algorithms 2-4).
      adapt: the supernet adaptation (Algorithm 5, Eq. 3).
      epochs: the length of each adaptation round and its batch.
      eval: BN re-calibration and validation (seeded by `seed`).
      final: the high trade-off picks (Appendix C).
      baselines: {name: (top-1 error %, one value per objective)} for plots.
      latency_table: the latency table file of the "latency" objective, or "".
      compile_cache: keep compiled programs in WORKDIR/jax_cache.
    """

    config: ml_collections.FrozenConfigDict
    seed: int
    task: TransferTask
    supernet: task_supernet.SupernetSource
    loop: LoopConfig
    search: evolution.SearchConfig
    adapt: adaptation.AdaptConfig
    epochs: AdaptEpochs
    eval: evaluation.EvalConfig
    final: FinalConfig
    baselines: dict[str, tuple[float, ...]]
    latency_table: str
    compile_cache: bool


def search_config(s) -> evolution.SearchConfig:
    """evolution.SearchConfig from the config's `search` block."""
    return evolution.SearchConfig(
        pop_size=s.pop_size, generations=s.generations,
        crossover_prob=s.crossover_prob, mutation_prob=s.mutation_prob,
        mutation_eta=s.mutation_eta, n_members=s.n_members,
        sample_fraction=s.sample_fraction, feature_fraction=s.feature_fraction,
        n_candidates=s.n_candidates, pad_multiple=s.pad_multiple,
        mutation_variant=s.mutation_variant, predictor_bounds=s.predictor_bounds)


def adapt_config(a) -> adaptation.AdaptConfig:
    """adaptation.AdaptConfig from the config's `adapt` block."""
    return adaptation.AdaptConfig(
        lr=a.lr, lr_end=a.lr_end, momentum=a.momentum, nesterov=a.nesterov,
        weight_decay=a.weight_decay, label_smoothing=a.label_smoothing,
        floor=a.floor, checkpoint_every=a.checkpoint_every,
        exec_mode=a.exec_mode)


def eval_config(config) -> evaluation.EvalConfig:
    """evaluation.EvalConfig from the config's `eval` block (seeded by `seed`)."""
    e = config.eval
    return evaluation.EvalConfig(
        batch_size=e.batch_size, calib_images=e.calib_images,
        calib_batch_size=e.calib_batch_size, calib_seed=config.seed,
        subnets_per_call=e.subnets_per_call, cache_bytes=e.cache_bytes)


def final_config(f) -> FinalConfig:
    """FinalConfig from the config's `final` block."""
    return FinalConfig(num_tradeoff=f.num_tradeoff,
                       tradeoff_variant=f.tradeoff_variant,
                       tradeoff_neighbors=f.tradeoff_neighbors,
                       tradeoff_epsilon=f.tradeoff_epsilon)


def high_tradeoff_kwargs(f) -> dict[str, Any]:
    """Keyword arguments of `tradeoff.high_tradeoff` from a FinalConfig (or
    the config's `final` block)."""
    return dict(n_neighbors=f.tradeoff_neighbors or None,
                variant=f.tradeoff_variant, epsilon=f.tradeoff_epsilon)


def plan(config, num_devices: int | None = None) -> TransferPlan:
    """Validates `config` and resolves it into a TransferPlan.

    Args:
      config: a ConfigDict of experiments/configs/transfer.py (overridden),
        or the dict of a run's config.json (`workdir.read_config`).
      num_devices: devices the global batches are split over (default: all
        of `jax.devices()`).

    Raises:
      ValueError: a bad field (one line naming the flag; see `validate`),
        an unknown objective or a missing latency table.
      data.DataNotFoundError: the data is not prepared (names the command).
    """
    if not isinstance(config, ml_collections.ConfigDict):
        config = ml_collections.ConfigDict(config)
    validate(config, num_devices)
    space = run_space(config)
    names = objective_names(config.objectives)
    dataset = data.load(config.dataset, data_dir=config.data_dir or None)
    complexity = complexity_objectives(names[1:], space, dataset.num_classes,
                                       config.latency_table)
    s, a = config.search, config.adapt
    return TransferPlan(
        config=ml_collections.FrozenConfigDict(config), seed=config.seed,
        task=TransferTask(space, dataset, names, complexity),
        supernet=task_supernet.SupernetSource(
            config.supernet, reset_classifier=config.reset_classifier,
            dropout_rate=a.dropout_rate),
        loop=LoopConfig(iterations=s.iterations, archive_update=s.archive_update,
                        archive_size=s.archive_size,
                        predictor_train_size=s.predictor_train_size,
                        archive_init=s.archive_init),
        search=search_config(s), adapt=adapt_config(a),
        epochs=AdaptEpochs(epochs_per_iter=a.epochs_per_iter,
                           warmup_epochs=a.warmup_epochs, batch_size=a.batch_size,
                           max_steps_per_epoch=a.max_steps_per_epoch),
        eval=eval_config(config), final=final_config(config.final),
        baselines={k: tuple(float(x) for x in v)
                   for k, v in dict(config.baselines).items()},
        latency_table=config.latency_table, compile_cache=config.compile_cache)


# ------------------------------------------------------------ validation
def _get(config, field: str):
    node = config
    for part in field.split("."):
        try:
            node = node[part]
        except (KeyError, AttributeError, TypeError):
            raise ValueError(f"The config has no field {field!r} (a config.json "
                             f"from an older version?); start from "
                             f"experiments/configs/transfer.py.") from None
    return node


def _int(lo: int, hi: int | None = None):
    def check(v):
        ok = isinstance(v, numbers.Integral) and not isinstance(v, bool)
        if ok and v >= lo and (hi is None or v <= hi):
            return None
        return f"an integer >= {lo}" + ("" if hi is None else f" and <= {hi}")
    return check


def _real(lo: float, hi: float | None = None, lo_open: bool = False,
          hi_open: bool = False):
    def check(v):
        ok = isinstance(v, numbers.Real) and not isinstance(v, bool)
        if ok and (v > lo if lo_open else v >= lo) and (
                hi is None or (v < hi if hi_open else v <= hi)):
            return None
        left = "(" if lo_open else "["
        right = "inf)" if hi is None else (f"{hi})" if hi_open else f"{hi}]")
        return f"a number in {left}{lo}, {right}"
    return check


def _choice(options):
    def check(v):
        return None if v in options else f"one of {list(options)}"
    return check


def _string(nonempty: bool = False):
    def check(v):
        if isinstance(v, str) and (v.strip() or not nonempty):
            return None
        return "a non-empty string" if nonempty else "a string"
    return check


def _ints(v):
    ok = isinstance(v, (tuple, list)) and all(
        isinstance(x, numbers.Integral) and not isinstance(x, bool) for x in v)
    return None if ok else "a tuple of integers (e.g. '(32, 40)')"


def _reals(v):
    ok = isinstance(v, (tuple, list)) and all(
        isinstance(x, numbers.Real) and not isinstance(x, bool) for x in v)
    return None if ok else "a tuple of numbers (e.g. 1.0,1.2 or '(1.2,)')"


def _bool(v):
    return None if isinstance(v, bool) else "true or false"


# Every field of experiments/configs/transfer.py and what it must be.
FIELDS: dict[str, Callable[[Any], str | None]] = {
    "variant": _string(),
    "seed": _int(0),
    "dataset": _string(nonempty=True),
    "data_dir": _string(),
    "space": _choice(SPACES),
    "resolutions": _ints,
    "widths": _reals,
    "supernet": _string(),
    "reset_classifier": _bool,
    "compile_cache": _bool,
    "objectives": _string(nonempty=True),
    "latency_table": _string(),
    "search.iterations": _int(1),
    "search.archive_update": _choice(ARCHIVE_UPDATES),
    "search.archive_size": _int(4),
    "search.predictor_train_size": _int(0),
    "search.archive_init": _int(1),
    "search.n_candidates": _int(1),
    "search.pop_size": _int(4),
    "search.generations": _int(0),
    "search.crossover_prob": _real(0.0, 1.0),
    "search.mutation_prob": _real(0.0, 1.0),
    "search.mutation_eta": _real(0.0),
    "search.mutation_variant": _choice(operators.MUTATION_VARIANTS),
    "search.predictor_bounds": _choice(evolution.PREDICTOR_BOUNDS),
    "search.n_members": _int(1),
    "search.sample_fraction": _real(0.0, 1.0, lo_open=True),
    "search.feature_fraction": _real(0.0, 1.0, lo_open=True),
    "search.pad_multiple": _int(1),
    "adapt.epochs_per_iter": _int(0),
    "adapt.warmup_epochs": _int(0),
    "adapt.batch_size": _int(1),
    "adapt.lr": _real(0.0, lo_open=True),
    "adapt.lr_end": _real(0.0),
    "adapt.momentum": _real(0.0, 1.0, hi_open=True),
    "adapt.nesterov": _bool,
    "adapt.weight_decay": _real(0.0),
    "adapt.label_smoothing": _real(0.0, 1.0, hi_open=True),
    "adapt.dropout_rate": _real(0.0, 1.0, hi_open=True),
    "adapt.floor": _real(0.0, 1.0),
    "adapt.checkpoint_every": _int(1),
    "adapt.max_steps_per_epoch": _int(0),
    "adapt.exec_mode": _choice(supernet.EXEC_MODES),
    "eval.batch_size": _int(1),
    "eval.calib_images": _int(1),
    "eval.calib_batch_size": _int(1),
    "eval.subnets_per_call": _int(1),
    "eval.cache_bytes": _int(0),
    "final.num_tradeoff": _int(1),
    "final.tradeoff_variant": _choice(tradeoff.TRADEOFF_VARIANTS),
    "final.tradeoff_neighbors": _int(0),
    "final.tradeoff_epsilon": _real(0.0, lo_open=True),
}


def validate(config, num_devices: int | None = None) -> None:
    """Checks every field of a transfer config before any work is done.

    Args:
      config: a ConfigDict of experiments/configs/transfer.py (overridden).
      num_devices: devices the global batches are split over (default: all
        of `jax.devices()`).

    Raises:
      ValueError: one line naming the first bad `--config.*` field, its
        value and what it must be; or a missing latency table file.
    """
    for field, check in FIELDS.items():
        value = _get(config, field)
        need = check(value)
        if need:
            raise ValueError(f"--config.{field}={value!r} is invalid: it must be "
                             f"{need}.")
    s = config.search
    if s.pop_size % 2:
        raise ValueError(f"--config.search.pop_size={s.pop_size} is invalid: it "
                         f"must be even (parents are paired).")
    if s.n_candidates > s.pop_size:
        raise ValueError(f"--config.search.n_candidates={s.n_candidates} is "
                         f"invalid: it must be <= search.pop_size={s.pop_size}.")
    if 0 < s.predictor_train_size < 3:
        raise ValueError(f"--config.search.predictor_train_size="
                         f"{s.predictor_train_size} is invalid: the predictor needs "
                         f">= 3 subnets (0 = every measured subnet).")
    if config.adapt.lr_end > config.adapt.lr:
        raise ValueError(f"--config.adapt.lr_end={config.adapt.lr_end} is invalid: "
                         f"it must be <= adapt.lr={config.adapt.lr}.")
    run_space(config)
    names = objective_names(config.objectives)
    if config.latency_table:
        _check_latency_file(config.latency_table)
    elif "latency" in names:
        raise ValueError(_NEEDS_TABLE)
    _check_baselines(config.baselines, names)
    if num_devices is None:
        import jax

        num_devices = len(jax.devices())
    for field in ("adapt.batch_size", "eval.calib_batch_size"):
        if _get(config, field) % num_devices:
            raise ValueError(f"--config.{field}={_get(config, field)} is invalid: "
                             f"it must be a multiple of the {num_devices} devices "
                             f"(the batch is split evenly over them).")


def _check_baselines(baselines, names) -> None:
    for name, vals in dict(baselines).items():
        ok = isinstance(vals, (list, tuple)) and len(vals) == len(names) and all(
            isinstance(v, numbers.Real) for v in vals)
        if not ok:
            raise ValueError(
                f"--config.baselines.{name}={vals!r} is invalid: give "
                f"{len(names)} numbers (top-1 error %, then one per objective of "
                f"{','.join(names[1:])}).")
