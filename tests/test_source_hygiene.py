"""Source carries design, not diaries: no dates, measured millisecond figures, commit hashes or run labels.

Comments and docstrings of every .py under lra_sfa/, tasks/ and baselines/
are searched; measurements and their history belong in results/ (for the
kernels, results/kernels/README.md and NOTES.md there).
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FOLDERS = ("lra_sfa", "tasks", "baselines")
PATTERNS = {
    "date": re.compile(r"\b20\d\d-\d\d-\d\d\b"),
    "ms figure": re.compile(r"\d\s?ms\b"),
    "commit hash": re.compile(r"\b(?=[0-9a-f]*\d)(?=[0-9a-f]*[a-f])[0-9a-f]{7,40}\b"),
    "run label": re.compile(r"_s\d+(?:_|\.csv\b)"),
}


def prose(source: str) -> list[tuple[int, str]]:
    """(line, text) of every comment and docstring in a Python source."""
    found = [(tok.start[0], tok.string) for tok in tokenize.generate_tokens(io.StringIO(source).readline)
             if tok.type == tokenize.COMMENT]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(
                    first.value.value, str):
                found.extend((first.lineno + i, line) for i, line in enumerate(first.value.value.splitlines()))
    return found


def diary_entries(source: str) -> list[tuple[int, str, str]]:
    """(line, pattern name, text) for each comment or docstring line that matches a pattern."""
    return [(line, name, text.strip()) for line, text in prose(source)
            for name, pattern in PATTERNS.items() if pattern.search(text)]


def test_source_has_no_dates_ms_figures_hashes_or_run_labels():
    hits = [f"{path.relative_to(REPO)}:{line}: {name}: {text}"
            for folder in FOLDERS for path in sorted((REPO / folder).rglob("*.py"))
            for line, name, text in diary_entries(path.read_text())]
    assert not hits, "measurement history in source (move it to results/):\n" + "\n".join(hits)


def test_the_check_finds_each_kind_in_comments_and_docstrings_only():
    source = '''"""Kernel. Measured 3.17 ms on 2026-11-29 (commit f603002)."""


def f():
    """The grid found it (sfa_explore_s11_gluon.csv)."""
    x = "2026-11-29 3 ms f603002"  # a string in code is not prose
    return x  # 12ms here
'''
    kinds = {name for _, name, _ in diary_entries(source)}
    assert kinds == set(PATTERNS)
    assert all(line != 6 for line, _, _ in diary_entries(source))
    assert diary_entries('"""Decode for 128 keys, D=4096 features, in 2 stages, cafe."""\n') == []


def test_no_tracked_text_labels_work_by_the_period_it_was_done_in():
    """Docs, results write-ups, configs and scripts name commits, dates and devices, never the working period
    in which something was done."""
    period = re.compile(r"\bsessions?\b", re.IGNORECASE)
    hits = []
    for path in sorted(REPO.rglob("*")):
        parts = path.relative_to(REPO).parts
        if (not path.is_file() or path.suffix not in (".md", ".py", ".yaml", ".sh", ".toml")
                or parts[0].startswith(".") or parts[0] in ("outputs", "multirun") or "egg-info" in parts[0]):
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if period.search(line.replace('scope="session"', "")):  # pytest's fixture scope is a name, not a label
                hits.append(f"{path.relative_to(REPO)}:{number}: {line.strip()[:100]}")
    assert not hits, "work labelled by its period (name the commit, date or device instead):\n" + "\n".join(hits)


def test_no_file_name_carries_a_run_label():
    """Measurement files are named by what they hold, their date and the commit that added them, not by the
    numbered working period that produced them (``..._s11_gluon.csv``); their mentions in text likewise."""
    label = PATTERNS["run label"]
    names = [path.relative_to(REPO) for folder in ("results", "lab", "docs", "conf")
             for path in sorted((REPO / folder).rglob("*")) if path.is_file()]
    assert not [name for name in names if label.search(name.name)]
    mentions = [f"{name}:{number}" for name in names if name.suffix == ".md"
                for number, line in enumerate((REPO / name).read_text().splitlines(), 1) if label.search(line)]
    assert not mentions, "a file named by its working period is mentioned at: " + ", ".join(mentions)
