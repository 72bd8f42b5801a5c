"""Writes a benchmark's figures into the README: the block between ``<!-- BENCHMARK-NAME -->``
and ``<!-- /BENCHMARK-NAME -->`` is replaced by the table the script built, so the README's
figures are always the output of a real run, never typed in by hand."""

import os
import re
from typing import Iterable, Sequence

README = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "README.md")


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_block(name: str, markdown: str, path: str = README) -> None:
    """Replace the README block ``name`` (e.g. ``INGEST``) with ``markdown``."""
    with open(path) as f:
        text = f.read()
    start, end = f"<!-- BENCHMARK-{name} -->", f"<!-- /BENCHMARK-{name} -->"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    if not pattern.search(text):
        raise SystemExit(f"README.md has no block {start} ... {end}")
    text = pattern.sub(lambda _: f"{start}\n{markdown.strip()}\n{end}", text)
    with open(path, "w") as f:
        f.write(text)
    print(f"# wrote the {name} block of {os.path.normpath(path)}")


def rate(value: float) -> str:
    """A rows/s figure as the README prints it: 1.4M, 319k, 887."""
    if value >= 1e6:
        return f"{value / 1e6:.2f}M"
    if value >= 1e3:
        return f"{value / 1e3:.0f}k"
    return f"{value:.0f}"
