"""Writes a benchmark's figures into the documentation: the block between
``<!-- BENCHMARK-NAME -->`` and ``<!-- /BENCHMARK-NAME -->`` (on ``docs/performance.md``) is
replaced by the table the script built, so the published figures are always the output of a
real run, never typed in by hand. Each block stands in exactly one file, so each figure has
one source."""

import glob
import os
import re
from typing import Iterable, Sequence

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))


def pages() -> list:
    """The Markdown files a block may stand in: the README and every documentation page."""
    return [os.path.join(ROOT, "README.md")] + sorted(
        glob.glob(os.path.join(ROOT, "docs", "**", "*.md"), recursive=True))


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_block(name: str, markdown: str) -> None:
    """Replace the block ``name`` (e.g. ``INGEST``) with ``markdown`` in the page holding it."""
    start, end = f"<!-- BENCHMARK-{name} -->", f"<!-- /BENCHMARK-{name} -->"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    holders = [p for p in pages() if pattern.search(open(p).read())]
    if len(holders) != 1:
        raise SystemExit(f"{start} ... {end} must stand in exactly one page, found {holders}")
    path = holders[0]
    with open(path) as f:
        text = f.read()
    text = pattern.sub(lambda _: f"{start}\n{markdown.strip()}\n{end}", text)
    with open(path, "w") as f:
        f.write(text)
    print(f"# wrote the {name} block of {os.path.relpath(path, ROOT)}")


def rate(value: float) -> str:
    """A rows/s figure as the README prints it: 1.4M, 319k, 887."""
    if value >= 1e6:
        return f"{value / 1e6:.2f}M"
    if value >= 1e3:
        return f"{value / 1e3:.0f}k"
    return f"{value:.0f}"
