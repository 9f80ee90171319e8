"""docs/architecture.md stays true: every server module is in its table, and
nothing it names is gone; a routing rule lives in placement.py alone."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs/architecture.md"


def test_every_server_module_is_in_the_architecture_table_and_every_one_named_exists():
    text = DOC.read_text()
    named = set(re.findall(r"`(server/[a-z_]+\.py)`", text))
    present = {f"server/{p.name}" for p in (ROOT / "server").glob("*.py") if p.name != "__init__.py"}
    assert present - named == set(), "server modules missing from docs/architecture.md"
    assert named - present == set(), "docs/architecture.md names server modules that do not exist"


def test_the_placement_rules_import_neither_the_request_nor_a_transport():
    tree = ast.parse((ROOT / "server/placement.py").read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert not imported & {"request", "router", "tiers", "grpc", "aiohttp", "vllm"}, imported
