"""Regenerate the README's "Supported ops" table from the op-rule registry.

    python scripts/supported_ops.py          # rewrite README.md in place
    python scripts/supported_ops.py --check  # exit 1 when README.md is out of date

The table lies between the markers `<!-- supported-ops:start -->` and
`<!-- supported-ops:end -->`; tests/test_supported_ops.py checks it matches the registry.
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from graphprune.ops import supported_ops_table  # noqa: E402

START, END = "<!-- supported-ops:start -->", "<!-- supported-ops:end -->"


def rendered(readme: str) -> str:
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{supported_ops_table()}\n{END}{tail}"


def main(argv: list[str]) -> int:
    path = ROOT / "README.md"
    text = path.read_text()
    new = rendered(text)
    if "--check" in argv:
        return 0 if new == text else 1
    path.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
