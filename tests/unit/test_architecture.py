"""The house's plan, checked: docs/architecture.md names every server
module and nothing that is gone; the five wings keep their rules; the
rooms (each top-level module or wing) stack without a circle; a routing
rule lives in placement.py alone."""

from __future__ import annotations

import ast
import re
import shutil
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SERVER = ROOT / "server"
DOC = ROOT / "docs/architecture.md"
WINGS = ("fronts", "routing", "tiers", "lookup", "observe", "callers")
GRPC = ("grpc", "grpc_health", "grpc_reflection")
SPINE_ABOVE_FRONTS = ("app.py", "__main__.py")  # the only modules above the front doors


def imports(path: Path, package_root: Path) -> set[str]:
    """Every module `path` imports, relative imports made absolute."""
    package = path.relative_to(package_root.parent).with_suffix("").parts[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = ".".join(list(package)[: len(package) - (node.level - 1)] + ([node.module] if node.module else []))
            found |= {f"{base}.{a.name}" for a in node.names} if node.module is None else {base}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return found


def room(path: Path, package_root: Path) -> str:
    """A top-level module's name, or the wing a module sits in."""
    parts = path.relative_to(package_root).parts
    return parts[0] if len(parts) > 1 else parts[0].removesuffix(".py")


def wing_violations(package_root: Path) -> list[str]:
    """Each broken rule, as `file: rule (module)`."""
    name = package_root.name
    out = []
    for path in sorted(package_root.rglob("*.py")):
        rel = path.relative_to(package_root)
        wing = rel.parts[0] if len(rel.parts) > 1 else ""
        for module in sorted(imports(path, package_root)):
            top, parts = module.split(".")[0], module.split(".")
            other = parts[1] if top == name and len(parts) > 1 and parts[1] in WINGS else ""
            if wing == "routing" and top in ("grpc", "aiohttp", "vllm", "prometheus_client", "faiss"):
                out.append(f"{rel}: routing is pure ({module})")
            if wing == "observe" and other and other != "observe":
                out.append(f"{rel}: observe imports no other wing ({module})")
            if other == "fronts" and wing != "fronts" and rel.name not in SPINE_ABOVE_FRONTS:
                out.append(f"{rel}: nothing below the front doors imports them ({module})")
            if top == "vllm" and rel.as_posix() != "tiers/engine.py":
                out.append(f"{rel}: only tiers/engine.py imports vllm ({module})")
            if top in GRPC and wing != "fronts" and rel.name != "app.py":
                out.append(f"{rel}: only fronts/ and app.py import grpc ({module})")
    return out


def floors(package_root: Path) -> dict[str, int]:
    """Each room's floor: one above the highest room it imports. Raises on
    an import circle between rooms."""
    edges: dict[str, set[str]] = defaultdict(set)
    rooms = set()
    for path in package_root.rglob("*.py"):
        if path.relative_to(package_root).parts == ("__init__.py",):
            continue
        here = room(path, package_root)
        rooms.add(here)
        for module in imports(path, package_root):
            parts = module.split(".")
            if parts[0] == package_root.name and len(parts) > 1 and parts[1] != here:
                edges[here].add(parts[1])
    floor: dict[str, int] = {}

    def visit(r: str, path: tuple[str, ...] = ()) -> int:
        if r in path:
            raise AssertionError(f"import circle: {' -> '.join((*path, r))}")
        if r not in floor:
            floor[r] = 1 + max((visit(x, (*path, r)) for x in edges[r]), default=0)
        return floor[r]

    for r in rooms:
        visit(r)
    return floor


def test_every_server_module_is_in_the_architecture_table_and_every_one_named_exists():
    text = DOC.read_text()
    named = set(re.findall(r"`(server/(?:[a-z_]+/)?[a-z_]+\.py)`", text))
    present = {f"server/{p.relative_to(SERVER).as_posix()}" for p in SERVER.rglob("*.py") if p.name != "__init__.py"}
    assert present - named == set(), "server modules missing from docs/architecture.md"
    assert named - present == set(), "docs/architecture.md names server modules that do not exist"


def test_the_wings_keep_their_rules():
    assert wing_violations(SERVER) == []
    for wing in WINGS:  # a wing's package holds its docstring only
        tree = ast.parse((SERVER / wing / "__init__.py").read_text())
        assert len(tree.body) == 1 and isinstance(tree.body[0], ast.Expr), wing


def test_the_rule_check_catches_planted_violations(tmp_path):
    copy = tmp_path / "server"
    shutil.copytree(SERVER, copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "routing" / "policy.py").write_text((copy / "routing" / "policy.py").read_text() + "\nimport prometheus_client\n")
    (copy / "observe" / "stats.py").write_text((copy / "observe" / "stats.py").read_text() + "\nfrom ..tiers import tier\n")
    (copy / "lookup" / "cache.py").write_text((copy / "lookup" / "cache.py").read_text() + "\nfrom ..fronts.calls import Calls\nimport grpc\n")
    found = sorted(wing_violations(copy))
    assert found == ["lookup/cache.py: nothing below the front doors imports them (server.fronts.calls)",
                     "lookup/cache.py: only fronts/ and app.py import grpc (grpc)",
                     "observe/stats.py: observe imports no other wing (server.tiers)",
                     "routing/policy.py: routing is pure (prometheus_client)"], found


def test_the_rooms_stack_without_a_circle():
    floor = floors(SERVER)
    assert len(floor) <= 16 and max(floor.values()) <= 8, floor
    assert floor["types"] == floor["errors"] == floor["config"] == 1  # the shared vocabulary imports no room
    assert floor["app"] > floor["fronts"] > floor["router"] > max(floor[w] for w in ("routing", "tiers", "lookup", "observe"))


def test_an_import_circle_is_caught(tmp_path):
    copy = tmp_path / "server"
    shutil.copytree(SERVER, copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "types.py").write_text((copy / "types.py").read_text() + "\nfrom .router import Router\n")
    try:
        floors(copy)
    except AssertionError as exc:
        assert "import circle" in str(exc) and "types" in str(exc)
    else:
        raise AssertionError("a circle through types.py went unnoticed")


def test_the_placement_rules_import_neither_the_request_nor_a_transport():
    tree = ast.parse((SERVER / "routing/placement.py").read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert not imported & {"request", "router", "tiers", "grpc", "aiohttp", "vllm"}, imported


def test_the_readme_names_every_decision_reason_the_proto_documents():
    # The proto's comment on RoutingDecision.reason is the contract; the
    # README's Generate row once lagged it by two reasons.
    proto = (ROOT / "proto/router.proto").read_text()
    comment = proto[proto.index("message RoutingDecision"):proto.index("string reason = 5;")]
    reasons = set(re.findall(r'"([a-z_]+)"', comment))
    row = next(line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("| `Generate` |"))
    assert reasons >= {"classifier", "target_share", "load", "override", "session", "context", "fallback"}, reasons
    assert {r for r in reasons if f"`{r}`" not in row} == set()
