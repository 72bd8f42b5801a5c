"""The documentation site's rules, checked without building it (CI builds it with -W):
every code block either runs in a named test or says why not, the README's quick start is the
docs' one, each benchmark block has one home, and the README's links lead to pages that exist."""

import os
import re
import sys

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DOCS = os.path.join(ROOT, "docs")
FENCE = re.compile(r"^```(\S*)")
MARK = re.compile(r"^% (runs-in|not-runnable): (\S.*)$")


def pages():
    found = []
    for folder, _, files in os.walk(DOCS):
        if "_build" in folder:
            continue
        found += [os.path.join(folder, f) for f in files if f.endswith(".md")]
    return sorted(found)


def code_blocks(path):
    """(line number, language, the line before the fence) of each fenced block."""
    lines = open(path).read().splitlines()
    blocks, inside = [], False
    for number, line in enumerate(lines, 1):
        match = FENCE.match(line)
        if not match:
            continue
        if not inside:
            blocks.append((number, match.group(1), lines[number - 2] if number > 1 else ""))
        inside = not inside
    assert not inside, f"{path}: a code block is not closed"
    return blocks


def quick_start(text):
    return text.split("## Quick start", 1)[1].split("```python", 1)[1].split("```", 1)[0]


def test_the_docs_have_the_pages_of_a_user_guide_and_an_api_reference():
    names = {os.path.relpath(p, DOCS) for p in pages()}
    for page in ("index.md", "getting-started.md", "api.md", "performance.md", "architecture.md",
                 "guide/estimator.md", "guide/model.md", "guide/online.md",
                 "guide/fault-tolerance.md", "guide/security.md", "guide/cluster.md",
                 "guide/troubleshooting.md", "design/online-training.md"):
        assert page in names


def test_every_code_block_runs_in_a_named_test_or_says_why_not():
    problems = []
    for path in pages():
        for number, language, before in code_blocks(path):
            where = f"{os.path.relpath(path, ROOT)}:{number}"
            if language == "text" or language.startswith("{"):  # figures and directives
                continue
            mark = MARK.match(before)
            if not mark:
                problems.append(f"{where}: no '% runs-in: ...' or '% not-runnable: ...' line")
                continue
            if mark.group(1) == "runs-in":
                test_file, _, test_name = mark.group(2).partition("::")
                source = os.path.join(ROOT, test_file)
                if not os.path.exists(source) or f"def {test_name}(" not in open(source).read():
                    problems.append(f"{where}: no test {mark.group(2)}")
    assert not problems, "\n".join(problems)


def test_the_readme_quick_start_is_the_docs_one():
    readme = open(os.path.join(ROOT, "README.md")).read()
    docs = open(os.path.join(DOCS, "getting-started.md")).read()
    assert quick_start(readme) == quick_start(docs)


def test_the_readme_two_commands_are_the_docs_ones():
    def commands(text, heading):
        return text.split(heading, 1)[1].split("```bash", 1)[1].split("```", 1)[0]

    readme = open(os.path.join(ROOT, "README.md")).read()
    docs = open(os.path.join(DOCS, "getting-started.md")).read()
    assert commands(readme, "## Two commands") == commands(docs, "## From a clone: two commands")
    assert "make test" in open(os.path.join(ROOT, ".ci", "run")).read()  # CI runs the README's


def test_each_benchmark_block_stands_in_one_page_only():
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    try:
        import readme
    finally:
        sys.path.pop(0)
    homes = {}
    for path in readme.pages():
        for name in re.findall(r"<!-- BENCHMARK-([A-Z]+) -->", open(path).read()):
            homes.setdefault(name, []).append(os.path.relpath(path, ROOT))
    assert set(homes) == {"INFERENCE", "STREAMING", "INGEST", "TRAINING", "ONLINE"}
    assert all(len(where) == 1 for where in homes.values()), homes


@pytest.mark.parametrize("page", ["README.md"] + [os.path.relpath(p, ROOT) for p in pages()])
def test_relative_links_lead_to_files_that_exist(page):
    path = os.path.join(ROOT, page)
    broken = []
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", open(path).read()):
        if "://" in target or target.startswith("mailto:"):
            continue
        if not os.path.exists(os.path.normpath(os.path.join(os.path.dirname(path), target))):
            broken.append(target)
    assert not broken, f"{page}: {broken}"
