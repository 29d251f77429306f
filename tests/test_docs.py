"""The documentation stays navigable: a README that fits on a few screens, links that lead somewhere, files cited
by the code that exist, and a module map in every package's `__init__.py` that names each of its modules."""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PACKAGES = ["protocol", "swarm", "expert", "node"]
README_MAX_LINES = 250

FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.M | re.S)
CODE_SPAN = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]\n]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$", re.M)
# a path the code cites: anything under docs/, or a markdown file (README.md, docs/RESULTS*.md, …)
CITED = re.compile(r"(?<![\w/.*-])((?:docs/[\w./*-]*[\w*])|(?:[\w.*-]+/)*[\w*-]+\.md)(?![\w/-])")
DESIGN_SECTION = re.compile(r"docs/design\.md,? ((?:§\d+(?:,? )?)+)")


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


def prose(text: str) -> str:
    """Markdown without fenced blocks and inline code: what renders as links and headings."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup dropped, lower case, punctuation removed, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = re.sub(r"[`*_]", "", text).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for m in HEADING.finditer(FENCE.sub("", path.read_text())):
        base = slug(m.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def broken_links(md: Path, text: str | None = None) -> list[str]:
    """Relative links of `md` (or of `text`, read as if it were `md`) whose file or heading does not exist."""
    bad = []
    for m in LINK.finditer(prose(md.read_text() if text is None else text)):
        target = m.group(1)
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        dest = (md.parent / path_part).resolve() if path_part else md
        if not dest.exists():
            bad.append(f"{md.relative_to(ROOT)}: {target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            bad.append(f"{md.relative_to(ROOT)}: {target} (no such heading)")
    return bad


def test_readme_fits_on_a_few_screens():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move detail into docs/"


def test_readme_keeps_the_two_quick_start_commands():
    text = (ROOT / "README.md").read_text()
    assert "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/paris-node join" in text
    assert "\nbash .ci/run\n" in text
    assert (ROOT / ".ci" / "run").is_file()


@pytest.mark.parametrize("md", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_leads_somewhere(md: Path):
    fences = re.findall(r"^(?:```|~~~)", md.read_text(), re.M)
    assert len(fences) % 2 == 0, f"{md.name}: a code block is not closed (it would swallow the page after it)"
    assert broken_links(md) == []


def test_the_link_checker_catches_a_dead_file_and_a_dead_anchor():
    page = "[ok](design.md#3-layout) [gone](nowhere.md) [bad anchor](cli.md#no-such-command)\n```\n[code](x.md)\n```\n"
    assert broken_links(DOCS / "cli.md", page) == [
        "docs/cli.md: nowhere.md (no such file)",
        "docs/cli.md: cli.md#no-such-command (no such heading)",
    ]


def cited_files() -> list[Path]:
    files = [ROOT / "pyproject.toml"]
    for top in [*PACKAGES, "benchmarks", "tests"]:
        files += sorted((ROOT / top).rglob("*.py"))
    return [f for f in files if f.resolve() != Path(__file__).resolve()]


def prose_of_code(f: Path) -> str:
    """The docstrings and comments of a Python file (a TOML file's comments): where the code cites documents."""
    text = f.read_text()
    if f.suffix != ".py":
        return "\n".join(line.partition("#")[2] for line in text.splitlines())
    docs = [ast.get_docstring(node) or "" for node in ast.walk(ast.parse(text))
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)]
    comments = [tok.string for tok in tokenize.generate_tokens(io.StringIO(text).readline)
                if tok.type == tokenize.COMMENT]
    return "\n".join(docs + comments)


def test_every_file_the_code_cites_exists():
    missing = []
    for f in cited_files():
        for m in CITED.finditer(prose_of_code(f)):
            cited = m.group(1).rstrip(".")
            found = list(ROOT.glob(cited)) if "*" in cited else [ROOT / cited] if (ROOT / cited).exists() else []
            if not found:
                missing.append(f"{f.relative_to(ROOT)}: {cited}")
    assert missing == []


def test_every_design_section_the_code_cites_exists():
    design = (DOCS / "design.md").read_text()
    sections = {int(n) for n in re.findall(r"^## (\d+)\.", design, re.M)}
    cited = []
    for f in [*cited_files(), *markdown_files()]:
        for m in DESIGN_SECTION.finditer(prose_of_code(f) if f.suffix != ".md" else f.read_text()):
            cited += [(f.relative_to(ROOT), int(n)) for n in re.findall(r"§(\d+)", m.group(1))]
    assert cited, "the code cites docs/design.md by section; the pattern should find those citations"
    assert [c for c in cited if c[1] not in sections] == []


def package_modules(package: str) -> list[str]:
    root = ROOT / package
    mods = [p.stem for p in root.glob("*.py") if p.name != "__init__.py"]
    mods += [p.parent.name for p in root.glob("*/__init__.py")]
    return sorted(mods)


@pytest.mark.parametrize("package", PACKAGES)
def test_each_package_maps_its_modules(package: str):
    doc = ast.get_docstring(ast.parse((ROOT / package / "__init__.py").read_text())) or ""
    mapped = set(re.findall(r"^- `(\w+)` — \S", doc, re.M))
    modules = set(package_modules(package))
    assert modules, package
    assert sorted(modules - mapped) == [], f"{package}/__init__.py: add a line `- `name` — what it holds`"
    assert sorted(mapped - modules) == [], f"{package}/__init__.py maps modules that do not exist"
