"""Imports point one way (DESIGN.md): model <- store <- manager <- api; the agent, dataplane,
dns and mesh never reach into the store, the manager or the API."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "shoal"

FORBIDDEN = {
    "model": {"store", "manager", "api", "agent", "dataplane", "dns", "mesh", "lab", "cli"},
    "store": {"manager", "api", "agent", "dataplane", "dns", "mesh", "lab", "cli"},
    "manager": {"api", "agent", "dataplane", "dns", "mesh", "lab", "cli"},
    "agent": {"store", "manager", "api", "lab", "cli"},
    "dataplane": {"store", "manager", "api", "agent", "lab", "cli"},
    "dns": {"store", "manager", "api", "agent", "lab", "cli"},
    "mesh": {"store", "manager", "api", "agent", "dataplane", "dns", "lab", "cli"},
    # The CA library: shoal.errors, cryptography and aiohttp only.
    "ca": {"model", "store", "manager", "api", "agent", "dataplane", "dns", "mesh", "lab",
           "cli"},
}


def shoal_imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        out |= {n.split(".")[1] for n in names if n.startswith("shoal.") and n.count(".") >= 1}
    return out


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_point_one_way(package):
    bad = {}
    for path in (ROOT / package).rglob("*.py"):
        wrong = shoal_imports(path) & FORBIDDEN[package]
        if wrong:
            bad[str(path.relative_to(ROOT))] = sorted(wrong)
    assert bad == {}
