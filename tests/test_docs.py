"""The README and the docs site: short, starting with the two commands, quoting no measured number, every page
in the nav, every included report present, and the layers they describe the ones the code has.
(`make docs` builds the site with mkdocs --strict, which checks every link and anchor.)"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PACKAGE = ROOT / "src" / "parabench"
MAX_README_LINES = 150
# The layers of src/parabench, in import order: a package imports only itself and the layers before it.
LAYERS = [["common"], ["config"], ["data", "models", "tracking"], ["results"], ["serving"], ["training"],
          ["study"], ["checks"], ["cli"]]  # fmt: skip
SNIPPET = re.compile(r'^--8<-- "([^":]+)(?::(\d+):)?"\s*$', re.M)
# A number with a fractional part (a measurement or a ratio); Python's version and IP addresses are not.
DECIMAL = re.compile(r"(?<![\w.])\d+\.\d+(?![\w.])")
ALLOWED_DECIMALS = {"3.11"}


def readme() -> str:
    return README.read_text(encoding="utf-8")


def nav_pages(entries: list) -> list[str]:
    """Every page file named in the mkdocs nav, nested sections included."""
    pages = []
    for entry in entries:
        value = next(iter(entry.values())) if isinstance(entry, dict) else entry
        pages += nav_pages(value) if isinstance(value, list) else [value]
    return pages


def test_readme_is_short_and_starts_with_the_two_commands() -> None:
    text = readme()
    assert len(text.splitlines()) <= MAX_README_LINES
    first_block = re.search(r"```[^\n]*\n(.*?)```", text, flags=re.S)
    assert first_block is not None
    commands = [line.split("#")[0].strip() for line in first_block.group(1).splitlines()]
    assert commands[:2] == ["make run", "make test"]
    assert text.index(first_block.group(0)) < text.index("\n## "), "the two commands come before any section"


def test_readme_quotes_no_measured_number() -> None:
    text = readme()
    assert not re.findall(r"\d\s?%", text), "the README quotes a percentage: point to reports/ instead"
    assert set(DECIMAL.findall(text)) <= ALLOWED_DECIMALS, "the README quotes a measured number"


def test_readme_keeps_the_ways_parabench_is_used() -> None:
    text = readme()
    for way in ("mlflow run . -P model=albert-base-v2", "make ui", "dvc repro", "GitHub Actions"):
        assert way in text


def test_readme_links_point_to_files() -> None:
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", readme())
    local = [link for link in links if not re.match(r"[a-z]+://", link)]
    assert local, "the README links to the docs"
    for link in local:
        assert (ROOT / link).exists(), f"README links to {link}, which does not exist"


def test_every_docs_page_is_in_the_nav_and_every_nav_entry_exists() -> None:
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    assert config["theme"]["name"] == "material"
    pages = nav_pages(config["nav"])
    on_disk = sorted(str(path.relative_to(DOCS)) for path in DOCS.rglob("*.md"))
    assert sorted(pages) == on_disk
    assert len(pages) == len(set(pages)), "a page is twice in the nav"


def test_included_reports_exist_and_only_their_title_is_dropped() -> None:
    included = [match for page in DOCS.rglob("*.md") for match in SNIPPET.findall(page.read_text("utf-8"))]
    assert ("reports/results.md", "2") in included, "the results page includes the generated report"
    for path, start in included:
        report = ROOT / path
        assert report.is_file(), f"docs include {path}, which does not exist"
        if start == "2":
            assert report.read_text(encoding="utf-8").startswith("# "), f"line 1 of {path} is not its title"


def test_docs_prose_quotes_no_percentage() -> None:
    for page in DOCS.rglob("*.md"):
        assert not re.findall(r"\d\s?%", page.read_text(encoding="utf-8")), f"{page.name} quotes a percentage"


def package_of(path: Path) -> str:
    """The layer name of a module: its package under parabench (config.py and cli.py are their own)."""
    name = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
    return "cli" if name == "__main__" else name


def layer_of(name: str) -> int | None:
    return next((index for index, layer in enumerate(LAYERS) if name in layer), None)


def imported_packages(path: Path) -> set[str]:
    """The parabench packages (or top modules) a file imports, at any depth of the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
        names += [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
        found |= {name.split(".")[1] for name in names if name.startswith("parabench.")}
    return found


def test_imports_point_one_way_as_the_architecture_page_says() -> None:
    order = " → ".join(" · ".join(layer) for layer in LAYERS)
    assert order in (DOCS / "architecture.md").read_text(encoding="utf-8")
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.parent == PACKAGE and path.name == "__init__.py":
            continue
        own = package_of(path)
        assert layer_of(own) is not None, f"{path.relative_to(PACKAGE)} is in no layer of LAYERS"
        for package in imported_packages(path) - {own}:
            layer = layer_of(package)
            assert layer is not None and layer < layer_of(own), (
                f"{path.relative_to(PACKAGE)} imports parabench.{package}: not a layer before {own}'s"
            )
