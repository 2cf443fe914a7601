"""Shared fixtures for the repository checks."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def load_yaml(path: Path) -> object:
    with path.open(encoding="utf-8") as stream:
        return yaml.safe_load(stream)


def role_dirs() -> list[Path]:
    return sorted(p for p in (ROOT / "roles").iterdir() if p.is_dir())


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT
