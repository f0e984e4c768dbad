"""The documents point only at files, folders and sections the repository has."""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).parents[1]
DOCS = sorted({
    *(ROOT / name for name in ("README.md", "RESULTS.md", "BUILD.md", "BENCHMARKS.md")),
    *ROOT.glob("docs/*.md"), *ROOT.glob("benchmarks/*.md"), *ROOT.glob("results/*/README.md")})
# Backticked repository paths, e.g. `results/atari_pong/seed0/` or `experiments/eval_atari.py`.
REPO_PATH = re.compile(r"`((?:results|tests|experiments|mtspark_jax|scripts|benchmarks|docs|notebooks)/[^`\s:<*]*)")
LINK = re.compile(r"\]\(([^)\s]+)\)")


def heading_anchors(markdown: str) -> set[str]:
    """GitHub's anchors of a Markdown text's headings: lower case, punctuation dropped, spaces to hyphens."""
    headings = re.findall(r"^#+ (.+)$", markdown, re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def missing_targets(doc: pathlib.Path) -> list[str]:
    """Relative links (with their #anchors) and backticked repository paths of ``doc`` that do not exist."""
    text = doc.read_text()
    missing = []
    for target in LINK.findall(re.sub(r"```.*?```", "", text, flags=re.S)):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (doc.parent / path) if path else doc
        if not dest.exists():
            missing.append(target)
        elif anchor and dest.suffix == ".md" and anchor not in heading_anchors(dest.read_text()):
            missing.append(target)
    missing += [p for p in REPO_PATH.findall(text) if not (ROOT / p.rstrip(".,;")).exists()]
    return missing


def test_heading_anchors_follow_github():
    assert heading_anchors("# Three games, one network (the paper's experiment)\n## Images: MNIST\n") == {
        "three-games-one-network-the-papers-experiment", "images-mnist"}


def test_missing_targets_are_found(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("# Here\n[a](doc.md#here) [b](gone.md) [c](doc.md#nowhere) `results/no_such_folder/`\n")
    assert missing_targets(doc) == ["gone.md", "doc.md#nowhere", "results/no_such_folder/"]


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: str(d.relative_to(ROOT)))
def test_document_targets_exist(doc):
    missing = missing_targets(doc)
    assert not missing, f"{doc.relative_to(ROOT)} points at what the repository lacks: {missing}"
