r"""Report saved subnets on the test split: top-1/top-5, MAdds, params, latency.

Usage:
  python -m experiments.evaluate --model_dir=runs/default/finetune_pick0
  python -m experiments.evaluate --model_dir=runs/default          # whole front
  python -m experiments.evaluate --model_dir=runs/default --which=picks \
      --latency_batch_size=1 --output=runs/default/eval_picks

--model_dir is an exported subnet directory (nat_jax.deploy.export.save_subnet), a
fine-tuning workdir (its model/), or a finished transfer workdir (every front
member, extracted from the task supernet of its width, the genotype's width
gene, with BN re-calibrated; a set that lacks a member's width is refused in
one line). Writes
OUTPUT.json and OUTPUT.md (default MODEL_DIR/evaluation.{json,md}).
--resolution evaluates at another input size than each subnet's own (any
size the network runs, e.g. OFA's 160 px; MAdds and latency follow it).
"""

from __future__ import annotations

import os

from absl import app, flags

from experiments import cli

_MODEL_DIR = flags.DEFINE_string("model_dir", None, "Subnet dir, fine-tune workdir "
                                 "or transfer workdir.")
_DATASET = flags.DEFINE_string("dataset", None, "Dataset (default: the model's).")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Prepared data directory.")
_WHICH = flags.DEFINE_enum("which", "front", ["front", "picks"],
                           "Transfer workdir: the whole front or only the picks.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 256, "Evaluation batch size.")
_LAT_BS = flags.DEFINE_integer("latency_batch_size", 1, "Batch size of latency.")
_LAT_REPEATS = flags.DEFINE_integer("latency_repeats", 20,
                                    "Timed runs per subnet (0: skip latency).")
_OUTPUT = flags.DEFINE_string("output", None, "Output path prefix (no extension).")
_RESOLUTION = flags.DEFINE_integer("resolution", None, "Input side to evaluate at "
                                   "(default: each subnet's own resolution).")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not _MODEL_DIR.value:
        raise ValueError("--model_dir is required.")
    if _BATCH_SIZE.value < 1 or _LAT_BS.value < 1 or _LAT_REPEATS.value < 0:
        raise ValueError("--batch_size and --latency_batch_size must be >= 1 and "
                         "--latency_repeats >= 0.")
    if _RESOLUTION.value is not None and _RESOLUTION.value < 1:
        raise ValueError(f"--resolution must be >= 1, got {_RESOLUTION.value}.")
    from nat_jax.deploy import model_report

    kwargs = dict(dataset=_DATASET.value, data_dir=_DATA_DIR.value,
                  batch_size=_BATCH_SIZE.value, latency_batch_size=_LAT_BS.value,
                  latency_repeats=_LAT_REPEATS.value, which=_WHICH.value,
                  resolution=_RESOLUTION.value)
    dataset, rows = model_report.evaluate_model_dir(_MODEL_DIR.value, **kwargs)
    out = _OUTPUT.value or os.path.join(_MODEL_DIR.value, "evaluation")
    model_report.write_model_report(rows, dataset, out + ".json", out + ".md")
    print(model_report.markdown_table(rows), end="")
    print(f"Wrote {out}.json and {out}.md")


if __name__ == "__main__":
    cli.run(main)
