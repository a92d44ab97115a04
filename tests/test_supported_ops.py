"""The README's "Supported ops" table is the registry's (scripts/supported_ops.py writes it)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from graphprune.ops.registry import RULES, supported_ops_table

ROOT = Path(__file__).resolve().parent.parent


def test_readme_table_matches_the_registry():
    r = subprocess.run([sys.executable, "scripts/supported_ops.py", "--check"], cwd=ROOT)
    assert r.returncode == 0, "README.md is out of date: run python scripts/supported_ops.py"


def test_every_rule_is_in_the_table_and_says_what_couples():
    table = supported_ops_table()
    for (domain, op), inst in RULES.items():
        assert f"`{domain + '::' if domain else ''}{op}`" in table
        assert type(inst).couples or type(inst).__doc__, op
