"""mkdocs hooks of lmdeq's docs (mkdocs.yml: ``hooks``).

The committed benchmark results live in ``benchmarks/results/`` not in
``docs/`` (a benchmark writes there only when its ``--out`` says so). So that the result pages show the figures and can link the raw files without a second copy in the
repository, every file under ``benchmarks/results/`` but the Markdown tables is added to the site as ``results/files/<name>``: a page
in ``docs/results/`` links ``files/speedup-cpu-amd-epyc.json`` or shows ``![...](files/<name>.png)``, and
mkdocs checks each such link like any other (a missing result file fails ``mkdocs build --strict``).
The Markdown tables the benchmarks write are included into the pages with ``--8<--`` (pymdownx.snippets).

The fault table's page also lists every case with what the user saw, generated from
``benchmarks/results/fault-table.json`` where the page says ``<!-- fault-cases -->``.
"""
from __future__ import annotations

import html
import json
from pathlib import Path

from mkdocs.structure.files import File, Files

RESULTS = "benchmarks/results"
SITE_PREFIX = "results/files"
FAULT_MARKER = "<!-- fault-cases -->"


def on_files(files: Files, config) -> Files:
    root = Path(config.config_file_path).resolve().parent / RESULTS
    # Not the .md tables: mkdocs would make pages of them; the result pages include them (--8<--) instead.
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix != ".md"):
        rel = path.relative_to(root).as_posix()
        files.append(File.generated(config, f"{SITE_PREFIX}/{rel}", abs_src_path=str(path)))
    return files


def _cell(text: str) -> str:
    """Table-cell-safe inline code (no Markdown inside, pipes and tags escaped)."""
    text = html.escape(" ".join(str(text).split()), quote=False)
    # Markdown still parses the text between inline HTML tags: entities for every character it would read
    text = "".join(f"&#{ord(c)};" if c in "|`*_[]\\~{}" else c for c in text)
    return f"<code>{text}</code>" if text else ""


def fault_cases_table(path: Path) -> str:
    data = json.loads(path.read_text())
    rows = ["| category | case | outcome | what the user saw |", "| --- | --- | --- | --- |"]
    for case in data["results"]:
        rows.append(f"| {case['category']} | {_cell(case['name'])} | {case['outcome']} | {_cell(case['detail'])} |")
    return "\n".join(rows) + "\n"


def on_page_markdown(markdown: str, page, config, files) -> str:
    if FAULT_MARKER in markdown:
        root = Path(config.config_file_path).resolve().parent
        markdown = markdown.replace(FAULT_MARKER, fault_cases_table(root / RESULTS / "fault-table.json"))
    return markdown
