"""Figures the scenarios measure in the containers (seconds unless named otherwise): kept
per scenario, written as JSON beside pytest's temporary files and printed at the end."""

from __future__ import annotations

import json
from pathlib import Path

FIGURES: dict[str, dict[str, float | str]] = {}
WRITTEN: list[Path] = []  # where write() put them


def record(scenario: str, name: str, value: float | str) -> None:
    FIGURES.setdefault(scenario, {})[name] = round(value, 2) if isinstance(value, float) else value


def write(path: Path) -> None:
    path.write_text(json.dumps(FIGURES, indent=2) + "\n")
    WRITTEN.append(path)


def summary() -> list[str]:
    return [f"{scenario}: " + ", ".join(f"{k} {v}" for k, v in values.items()) for scenario, values in FIGURES.items()]
