"""The documents stay readable in one sitting and their pointers stay true: the README and the model
card keep their length limits, every relative link in the README, docs/ and the cards points at a
file (and heading) that exists, and every `samsr COMMAND` / `samsr benchmark NAME` the README shows
is a real command."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from jobs.benchmark import BENCHMARKS
from jobs.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MODEL_CARD = ROOT / "pipeline" / "weights" / "MODEL_CARD.md"
DOCUMENTS = sorted(
    {README, MODEL_CARD, *(ROOT / "docs").glob("*.md"), *(ROOT / "pipeline" / "weights").glob("*.md")}
)

FENCE = re.compile(r"^```.*?^```", re.M | re.S)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6} +(.+?) *$", re.M)


def _prose(text: str) -> str:
    """The text without fenced code blocks (a `[x](y)` inside code is not a link)."""
    return FENCE.sub("", text)


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def relative_links(path: Path) -> list[tuple[str, Path, str]]:
    """(link as written, the file it points at, its #anchor or '') for each relative link."""
    out = []
    for target in LINK.findall(_prose(path.read_text())):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: ...
            continue
        file_part, _, anchor = target.partition("#")
        out.append((target, (path.parent / file_part).resolve() if file_part else path, anchor))
    return out


def test_readme_and_model_card_fit_in_one_sitting() -> None:
    readme = len(README.read_text().splitlines())
    card = len(MODEL_CARD.read_text().splitlines())
    assert readme <= 300, f"README.md has {readme} lines (limit 300): move details into docs/"
    assert card <= 200, f"MODEL_CARD.md has {card} lines (limit 200): move history to docs/experiments.md"


def test_documents_are_where_the_readme_says() -> None:
    names = {p.relative_to(ROOT).as_posix() for p in DOCUMENTS}
    expected = {
        "docs/architecture.md",
        "docs/manifest.md",
        "docs/benchmarks.md",
        "docs/training.md",
        "docs/relabel.md",
        "docs/experiments.md",
        "pipeline/weights/TRUST_CARD.md",
    }
    assert expected <= names
    linked = {target.relative_to(ROOT).as_posix() for _, target, _ in relative_links(README)}
    assert expected <= linked, f"README does not link {sorted(expected - linked)}"


def broken_links(doc: Path) -> list[str]:
    """Each relative link of ``doc`` whose file, or whose heading in a markdown file, is missing."""
    broken = []
    for written, target, anchor in relative_links(doc):
        if not target.exists():
            broken.append(f"{written}: no such file")
        elif anchor and target.suffix == ".md":
            anchors = {_anchor(h) for h in HEADING.findall(_prose(target.read_text()))}
            if anchor not in anchors:
                broken.append(f"{written}: no heading #{anchor} in {target.name}")
    return broken


@pytest.mark.parametrize("doc", DOCUMENTS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_points_at_an_existing_file_and_heading(doc: Path) -> None:
    broken = broken_links(doc)
    assert not broken, f"{doc.relative_to(ROOT)}: " + "; ".join(broken)


def test_the_experiment_history_is_linked_from_the_model_card() -> None:
    targets = {t for _, t, _ in relative_links(MODEL_CARD)}
    assert (ROOT / "docs" / "experiments.md").resolve() in targets


def test_readme_commands_are_real_subcommands() -> None:
    text = README.read_text()
    code = "\n".join(FENCE.findall(text) + re.findall(r"`([^`\n]+)`", _prose(text)))
    commands = re.findall(r"\bsamsr +([a-z][a-z-]*)", code)
    benchmarks = re.findall(r"\bsamsr +benchmark +([a-z][a-z-]*)", code)
    unknown = sorted(set(commands) - set(COMMANDS))
    assert not unknown, f"README names samsr commands that do not exist: {unknown}"
    unknown = sorted(set(benchmarks) - set(BENCHMARKS))
    assert not unknown, f"README names benchmarks that do not exist: {unknown}"
    # and it shows each of them once at least
    assert set(commands) == set(COMMANDS), f"README shows no {sorted(set(COMMANDS) - set(commands))}"
    assert set(benchmarks) == set(BENCHMARKS), f"README shows no {sorted(set(BENCHMARKS) - set(benchmarks))}"


def test_anchor_and_link_rules_catch_a_broken_link(tmp_path: Path) -> None:
    """The checker itself: a missing file and a missing heading are both reported."""
    (tmp_path / "a.md").write_text("# Title\n\n## Which refined masks to trust\n")
    doc = tmp_path / "b.md"
    doc.write_text(
        "[ok](a.md#which-refined-masks-to-trust) [gone](c.md) [bad](a.md#nope) "
        "[web](https://example.org/x.md)\n```\n[code](d.md)\n```\n"
    )
    links = relative_links(doc)
    assert [w for w, _, _ in links] == ["a.md#which-refined-masks-to-trust", "c.md", "a.md#nope"]
    assert broken_links(doc) == ["c.md: no such file", "a.md#nope: no heading #nope in a.md"]
    assert _anchor("Which refined masks to trust") == "which-refined-masks-to-trust"
    assert _anchor("`samsr relabel` in full (v2.1)") == "samsr-relabel-in-full-v21"
