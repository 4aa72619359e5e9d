"""Every spec section and quirk cited in the repository resolves to a heading in ``docs/``.

Code, configs and the README cite the computation model as ``spec §4.1``, ``§2-§8``,
``spec 8.3`` or ``Q28``. The anchor rule (stated in ``docs/README.md``):

* A heading in ``docs/*.md`` (a line starting with ``#``) whose first word is ``§N`` or
  ``§N.M`` defines the section anchor ``N`` or ``N.M``; one whose first word is ``Qn``
  defines the quirk anchor ``Qn``. Every anchor is defined exactly once.
* A citation is ``§`` followed by a section number (``§4.1``); a bare number right after the
  word ``spec`` (``spec 8.3``, ``spec 4.1/4.2, 5``, ``spec section 0``); or ``Qn`` as a word.
  A range (``§2-§8``, ``§1.2-1.5``) cites both ends. Words after the number (``§4.1 step 3``)
  do not matter. ``style §N`` cites the style guide, not the spec, and is skipped.
* Scanned: every tracked or new (not git-ignored) ``.py``, ``.md``, ``.yaml``, ``.c``,
  ``.h``, ``.csv``, ``.toml`` file outside ``docs/`` and ``tests/data/``.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SCANNED_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".c", ".h", ".csv", ".toml", ".cfg", ".txt"}
SKIPPED_DIRS = ("docs/", "tests/data/")
SKIPPED_PARTS = {
    ".git",
    ".pytest_cache",
    ".ruff_cache",
    ".venv",
    "__pycache__",
    "build",
    "checkpoints",
    "dist",
    "lightning_logs",
    "multirun",
    "outputs",
}
"""Folders skipped when there is no git to list the files (build outputs, caches, runs)."""

SECTION = r"\d+(?:\.\d+)*"
_SIGN = "\u00a7"  # the section sign, spelled so this file cites nothing itself
_ITEM = rf"{_SIGN}\s?({SECTION})(?:\s*[-\u2013]\s*{_SIGN}?\s?({SECTION}))?"
SECTION_GROUP = re.compile(
    rf"(?P<style>\bstyle(?:\.md)?\s+)?(?P<items>{_ITEM}(?:\s*(?:,|/|and)\s*{_ITEM})*)"
)
SECTION_ITEM = re.compile(_ITEM)
_BARE = rf"{SECTION}(?:\s*[-\u2013]\s*{SECTION})?"
BARE_GROUP = re.compile(
    rf"\b(?:spec|acim-model\.md)\s+(?:section\s+)?(?P<items>{_BARE}(?:\s*[,/]\s*{_BARE})*)\b",
    re.IGNORECASE,
)
BARE_ITEM = re.compile(rf"({SECTION})(?:\s*[-\u2013]\s*({SECTION}))?")
QUIRK = re.compile(r"\bQ(\d+)\b")
HEADING = re.compile(rf"^#{{1,6}}\s+(?:{_SIGN}({SECTION})|Q(\d+))(?=[\s:.]|$)")

# The computation spec's sections and quirks; the docs must give each one a heading.
SPEC_SECTIONS = (
    ["0"]
    + ["1"] + [f"1.{i}" for i in range(1, 8)]
    + ["2"] + [f"2.{i}" for i in range(1, 4)]
    + ["3"] + [f"3.{i}" for i in range(1, 4)]
    + ["4"] + [f"4.{i}" for i in range(1, 5)]
    + ["5"] + [f"5.{i}" for i in range(1, 4)]
    + ["6"]
    + ["7"] + [f"7.{i}" for i in range(1, 3)]
    + ["8"] + [f"8.{i}" for i in range(1, 4)]
    + ["9"] + [f"9.{i}" for i in range(1, 7)]
    + ["10", "11"]
    + ["12"] + [f"12.{i}" for i in range(1, 3)]
    + ["13", "14"]
)  # fmt: skip
SPEC_QUIRKS = [f"Q{i}" for i in range(1, 36)]


def citations(text: str) -> list[tuple[int, str]]:
    """``(line, anchor)`` for every citation in ``text``: ``"4.1"`` for a section, ``"Q5"``
    for a quirk; a range gives both ends."""
    found: list[tuple[int, str]] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        for group in SECTION_GROUP.finditer(line):
            if group["style"]:
                continue
            for item in SECTION_ITEM.finditer(group["items"]):
                found += [(lineno, s) for s in item.groups() if s]
        for group in BARE_GROUP.finditer(line):
            for item in BARE_ITEM.finditer(group["items"]):
                found += [(lineno, s) for s in item.groups() if s]
        found += [(lineno, f"Q{m[1]}") for m in QUIRK.finditer(line)]
    return found


def anchors(docs: Path = DOCS) -> dict[str, list[str]]:
    """Anchor -> the ``file:line`` places that define it, from the headings in ``docs``."""
    out: dict[str, list[str]] = {}
    for path in sorted(docs.glob("*.md")):
        in_code = False
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if line.startswith("```"):
                in_code = not in_code
            m = None if in_code else HEADING.match(line)
            if m:
                key = m[1] if m[1] else f"Q{m[2]}"
                out.setdefault(key, []).append(f"{path.name}:{lineno}")
    return out


def scanned_files(root: Path = ROOT) -> list[Path]:
    """Tracked and new (not ignored) text files that may cite the spec."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):  # no git: walk the tree
        listed = [
            str(p.relative_to(root))
            for p in root.rglob("*")
            if p.is_file()
            and not SKIPPED_PARTS & set(p.relative_to(root).parts)
            and not any(part.endswith(".egg-info") for part in p.relative_to(root).parts)
        ]
    files = []
    for rel in listed:
        path = root / rel
        if rel.startswith(SKIPPED_DIRS) or path.suffix not in SCANNED_SUFFIXES:
            continue
        if path.is_file():
            files.append(path)
    return files


def unresolved(files: list[Path], known: set[str], root: Path = ROOT) -> list[str]:
    """``"file:line: cites X"`` for every citation without a docs heading."""
    bad = []
    for path in files:
        text = path.read_text(encoding="utf-8", errors="replace")
        for lineno, key in citations(text):
            if key not in known:
                shown = key if key.startswith("Q") else _SIGN + key
                bad.append(f"{path.relative_to(root)}:{lineno}: cites {shown}")
    return bad


# ---------------------------------------------------------------------------------- tests


def test_every_citation_in_the_repository_resolves_to_a_docs_heading():
    files = scanned_files()
    assert any(p.name == "README.md" for p in files) and any(p.suffix == ".yaml" for p in files)
    bad = unresolved(files, set(anchors()))
    assert not bad, "citations without a heading in docs/:\n" + "\n".join(bad)


def test_without_git_the_tree_is_walked(monkeypatch, tmp_path):
    for rel in ("README.md", "pkg/mod.py", "conf/a.yaml", "outputs/run/x.md", "docs/b.md"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("text\n")

    def no_git(*args, **kwargs):
        raise OSError("git not found")

    monkeypatch.setattr(subprocess, "run", no_git)
    found = sorted(str(p.relative_to(tmp_path)) for p in scanned_files(tmp_path))
    assert found == ["README.md", "conf/a.yaml", "pkg/mod.py"]


def test_docs_give_every_spec_section_and_quirk_exactly_one_heading():
    defined = anchors()
    missing = [k for k in SPEC_SECTIONS + SPEC_QUIRKS if k not in defined]
    assert not missing, f"no heading in docs/ for {missing}"
    twice = {k: v for k, v in defined.items() if len(v) > 1}
    assert not twice, f"anchors defined more than once: {twice}"


def test_citation_parser_finds_the_forms_the_repository_uses():
    s = _SIGN
    text = "\n".join(
        [
            f"noise (spec {s}2-{s}8) and {s}1.2-1.5",
            f"see {s}4.1, {s}5, {s}6 and {s}9.4/{s}7.2; {s}4.1 step 3",
            "conf: (spec 4.1/4.2, 5, 6, 8.1) and Spec 3.1 / 12: spec section 0",
            "quirks Q5 and (Q28); not FAQ5 nor Q5x",
            f"the style guide (style {s}2, {s}6) is not the spec",
        ]
    )
    assert citations(text) == [
        (1, "2"),
        (1, "8"),
        (1, "1.2"),
        (1, "1.5"),
        (2, "4.1"),
        (2, "5"),
        (2, "6"),
        (2, "9.4"),
        (2, "7.2"),
        (2, "4.1"),
        (3, "4.1"),
        (3, "4.2"),
        (3, "5"),
        (3, "6"),
        (3, "8.1"),
        (3, "3.1"),
        (3, "12"),
        (3, "0"),
        (4, "Q5"),
        (4, "Q28"),
    ]


def test_an_unknown_citation_is_reported_with_file_and_line(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "model.md").write_text(f"# Model\n\n## {_SIGN}4 Cycles\n\n### Q5 Batch scales\n")
    src = tmp_path / "mod.py"
    fake_quirk = f"Q{7 * 11}"  # built here so this file cites no unknown quirk itself
    src.write_text(f'"""Cycles (spec {_SIGN}4).\n\nSee {_SIGN}99 and Q5, {fake_quirk}."""\n')
    bad = unresolved([src], set(anchors(docs)), root=tmp_path)
    assert bad == [f"mod.py:3: cites {_SIGN}99", f"mod.py:3: cites {fake_quirk}"]


def test_a_heading_defines_an_anchor_only_with_its_first_word(tmp_path):
    (tmp_path / "a.md").write_text(
        f"## {_SIGN}4.1 Per cycle\n## About {_SIGN}5\n```\n# {_SIGN}6 in a code block\n```\n"
        "### Q10 CUDA division\n### Q1x not a quirk\n"
    )
    assert anchors(tmp_path) == {"4.1": ["a.md:1"], "Q10": ["a.md:6"]}


def _slug(heading: str) -> str:
    """GitHub's heading anchor: lowercase, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


LINK = re.compile(r"\]\((?!https?://|mailto:)([^)#\s]*)(?:#([^)\s]+))?\)")


def broken_links(path: Path) -> list[str]:
    """``"page:line: ..."`` for every relative link of a docs page whose file or heading
    anchor does not exist."""
    bad = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        for m in LINK.finditer(line):
            target = (path.parent / m[1]).resolve() if m[1] else path
            if not target.exists():
                bad.append(f"{path.name}:{lineno}: no file {m[1]}")
                continue
            if m[2] and target.suffix == ".md":
                heads = [
                    _slug(h.lstrip("#"))
                    for h in target.read_text(encoding="utf-8").splitlines()
                    if re.match(r"#{1,6}\s", h)
                ]
                if m[2] not in heads:
                    bad.append(f"{path.name}:{lineno}: no heading #{m[2]} in {target.name}")
    return bad


@pytest.mark.parametrize("page", sorted(p.name for p in DOCS.glob("*.md")))
def test_docs_links_point_at_existing_files_and_headings(page):
    bad = broken_links(DOCS / page)
    assert not bad, "\n".join(bad)


def test_broken_links_are_reported(tmp_path):
    (tmp_path / "b.md").write_text(f"## {_SIGN}4.1 One cycle: tile t\n### Q10 CUDA division\n")
    page = tmp_path / "a.md"
    page.write_text(
        "[ok](b.md#41-one-cycle-tile-t) [ok](b.md#q10-cuda-division) [web](https://x.org/a)\n"
        "[gone](c.md) [bad anchor](b.md#q10-cuda)\n"
    )
    assert broken_links(page) == ["a.md:2: no file c.md", "a.md:2: no heading #q10-cuda in b.md"]


PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)
EXAMPLES = [
    (page.name, i, block)
    for page in sorted(DOCS.glob("*.md"))
    for i, block in enumerate(PYTHON_BLOCK.findall(page.read_text(encoding="utf-8")))
]


@pytest.mark.parametrize("page, index, code", EXAMPLES, ids=[f"{p}[{i}]" for p, i, _ in EXAMPLES])
def test_docs_python_examples_run(page, index, code):
    """Every ```python block of the docs runs as written (its asserts check the claims)."""
    if "from transformers" in code:  # the language-model examples need the llm extra
        pytest.importorskip("transformers")
    exec(compile(code, f"docs/{page}:python[{index}]", "exec"), {"__name__": "__docs__"})
