"""The generated API code cannot drift from proto/kurma/v1: regenerate it and compare."""

from __future__ import annotations

from pathlib import Path

from kurmad.api import codegen


def test_generated_code_matches_the_proto_files(tmp_path: Path) -> None:
    fresh = {p.name: p.read_text() for p in codegen.generate(tmp_path)}
    committed = {
        p.name: p.read_text()
        for p in codegen.TARGET.iterdir()
        if p.name != "__init__.py" and p.is_file()
    }
    assert sorted(fresh) == sorted(committed), "files missing or extra: run make proto"
    for name, text in fresh.items():
        assert committed[name] == text, f"{name} is stale: run make proto"
