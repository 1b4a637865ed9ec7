"""README.md stays a front door, and README.md and docs/ point only at things
that exist: every relative link (file and #anchor) and every repository path
written as code (`nat_jax/nat/transfer.py`). An independent check beside
`mkdocs build --strict`, which sees only docs/ and only links."""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
MAX_README_LINES = 250
PAGES = sorted((ROOT / "docs").rglob("*.md"))

_FENCE = re.compile(r"^```.*?^```", re.S | re.M)
_CODE = re.compile(r"`[^`\n]+`")
_LINK = re.compile(r"\]\(([^)\s]+)\)")
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)
_PATH = re.compile(r"`((?:nat_jax|experiments|benchmarks|tests|docs|notebooks)"
                   r"/[\w./-]*)(?:::\w+|:\w+)?`")


def _prose(text: str) -> str:
    """The Markdown without fenced blocks and inline code (no links there)."""
    return _CODE.sub("", _FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's (and, for plain headings, mkdocs') anchor of a heading."""
    text = re.sub(r"\[([^]]*)\]\([^)]*\)", r"\1", heading)   # links -> text
    text = re.sub(r"[^\w\- ]", "", text.replace("`", "").lower())
    return text.replace(" ", "-")


def anchors(path: pathlib.Path) -> set[str]:
    return {slug(h) for h in _HEADING.findall(_FENCE.sub("", path.read_text()))}


def broken_links(path: pathlib.Path) -> list[str]:
    """Relative links of one Markdown file whose file or anchor is missing."""
    bad = []
    for target in _LINK.findall(_prose(path.read_text())):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):     # http:, https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists():
            bad.append(f"{path.name}: {target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            bad.append(f"{path.name}: {target} (no such heading)")
    return bad


def missing_paths(path: pathlib.Path) -> list[str]:
    """Repository paths written as inline code that do not exist."""
    return [f"{path.name}: {p}" for p in _PATH.findall(path.read_text())
            if not (ROOT / p).exists()]


def test_readme_is_a_front_door():
    n = len(README.read_text().splitlines())
    assert n <= MAX_README_LINES, (
        f"README.md has {n} lines (limit {MAX_README_LINES}): move detail to docs/")


def test_readme_keeps_the_regenerated_block_once():
    # docs/figures/readme_figures.py rewrites the text between the two markers
    text = README.read_text()
    assert text.count("<!-- default-run:begin -->") == 1
    assert text.count("<!-- default-run:end -->") == 1


@pytest.mark.parametrize("page", [README, *PAGES], ids=lambda p: p.name)
def test_relative_links_resolve(page):
    assert broken_links(page) == []


@pytest.mark.parametrize("page", [README, *PAGES], ids=lambda p: p.name)
def test_cited_paths_exist(page):
    assert missing_paths(page) == []


def test_every_page_is_in_the_site_nav():
    nav = (ROOT / "mkdocs.yml").read_text()
    assert [p.name for p in PAGES if f": {p.name}" not in nav] == []


def test_checkers_catch_what_they_are_for(tmp_path):
    (tmp_path / "b.md").write_text("# Some `code` heading, here\n\ntext\n")
    a = tmp_path / "a.md"
    a.write_text("[ok](b.md) [ok](b.md#some-code-heading-here) [web](https://x.y)\n"
                 "[gone](c.md) [gone](b.md#nope) `[not a link](c.md)`\n"
                 "```\n[not a link](d.md)\n```\n"
                 "`nat_jax/nat/transfer.py` `nat_jax/no_such_module.py`\n")
    assert broken_links(a) == ["a.md: c.md (no such file)",
                               "a.md: b.md#nope (no such heading)"]
    assert missing_paths(a) == ["a.md: nat_jax/no_such_module.py"]
