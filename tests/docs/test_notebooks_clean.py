"""Notebooks are committed clean, and the install ranges hold CI's pins.

The notebooks themselves run in .ci/run (nbmake, NAT_JAX_NOTEBOOK_TEST=1);
here: no outputs or execution counts in the repository (they would hide
stale results and bloat diffs), the Colab badge of each points at its own
file, and every exact pin of requirements.txt lies inside the compatible
range that setup.cfg declares (what `pip install` of the repository, as a
notebook does, resolves).
"""

import configparser
import json
import pathlib

import pytest
from packaging.requirements import Requirement

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXPECTED = ("deployment.ipynb", "quickstart.ipynb", "tpu_transfer.ipynb")


def notebooks() -> list[pathlib.Path]:
    """Every .ipynb of the repository outside hidden folders (venvs, checkpoints)."""
    return sorted(p for p in ROOT.rglob("*.ipynb")
                  if not any(part.startswith(".") or part in ("runs", "build")
                             for part in p.relative_to(ROOT).parts[:-1]))


def dirty_cells(nb: dict) -> list[str]:
    """Descriptions of the cells that carry outputs or an execution count."""
    out = []
    for i, cell in enumerate(nb.get("cells", [])):
        if cell.get("cell_type") != "code":
            continue
        if cell.get("outputs"):
            out.append(f"cell {i}: {len(cell['outputs'])} output(s)")
        if cell.get("execution_count") is not None:
            out.append(f"cell {i}: execution_count {cell['execution_count']}")
    return out


def test_the_three_notebooks_are_found():
    names = {p.name for p in notebooks() if p.parent == ROOT / "notebooks"}
    assert set(EXPECTED) <= names


@pytest.mark.parametrize("path", notebooks(), ids=lambda p: str(p.relative_to(ROOT)))
def test_notebook_is_committed_without_outputs(path):
    nb = json.loads(path.read_text())
    dirty = dirty_cells(nb)
    assert not dirty, (f"{path.relative_to(ROOT)} has outputs ({'; '.join(dirty[:5])}"
                       f"); clear them (Jupyter: Edit > Clear outputs of all cells) "
                       f"before committing.")


@pytest.mark.parametrize("name", EXPECTED)
def test_notebook_badge_and_install_cell(name):
    nb = json.loads((ROOT / "notebooks" / name).read_text())
    intro = "".join(nb["cells"][0]["source"])
    badge = "colab.research.google.com/github/OWNER/nat-jax/blob/main/notebooks/"
    assert badge + name in intro
    code = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    assert code[0].count("REPO_URL = ") == 1 and "NAT_JAX_NOTEBOOK_INSTALL" in code[0]
    assert sum(c.count("REPO_URL = ") for c in code) == 1   # the URL in one place


def test_dirty_cells_finds_outputs_and_counts():
    clean = {"cells": [{"cell_type": "code", "execution_count": None, "outputs": []},
                       {"cell_type": "markdown", "source": ["x"]}]}
    dirty = {"cells": [{"cell_type": "code", "execution_count": 3, "outputs": [
        {"output_type": "stream", "name": "stdout", "text": ["1\n"]}]}]}
    assert dirty_cells(clean) == []
    assert dirty_cells(dirty) == ["cell 0: 1 output(s)", "cell 0: execution_count 3"]


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", f"requirements.txt: {line} is not a pin"
            pins[req.name.lower().replace("_", "-")] = spec.version
    return pins


def test_setup_cfg_ranges_contain_the_ci_pins():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    reqs = [Requirement(r) for r in cfg["options"]["install_requires"].split("\n")
            if r.strip()]
    ranges = {r.name.lower().replace("_", "-"): r.specifier for r in reqs}
    pins = _pins()
    assert set(ranges) == set(pins), "setup.cfg and requirements.txt name different " \
        f"packages: {sorted(set(ranges) ^ set(pins))}"
    outside = {n: (pins[n], str(s)) for n, s in ranges.items()
               if not s.contains(pins[n], prereleases=True)}
    assert not outside, f"requirements.txt pins outside setup.cfg's ranges: {outside}"
