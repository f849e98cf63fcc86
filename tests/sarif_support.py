"""Microsoft's SARIF Multitool, installed by `make sarif-tool` (a dependency of `make test`)."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MULTITOOL = Path(
    os.environ.get("SARIF_MULTITOOL")
    or ROOT
    / ".venv"
    / "tools"
    / "node_modules"
    / "@microsoft"
    / "sarif-multitool-linux"
    / "Sarif.Multitool"
)
_PROBLEM = re.compile(r": (error|warning) [A-Z]+\d+: ")


def multitool_problems(paths: Sequence[Path]) -> list[str]:
    """Every error and warning `Sarif.Multitool validate --rule-kind "Gh;Sarif"` reports for ``paths``."""
    assert MULTITOOL.is_file(), f"SARIF Multitool not found at {MULTITOOL}: run `make sarif-tool`"
    env = {
        **os.environ,
        "DOTNET_SYSTEM_GLOBALIZATION_INVARIANT": "1",
        "DOTNET_CLI_TELEMETRY_OPTOUT": "1",
    }
    proc = subprocess.run(
        [str(MULTITOOL), "validate", "--rule-kind", "Gh;Sarif", *map(str, paths)],
        capture_output=True, text=True, timeout=600, env=env, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"Done. {len(paths)} files scanned." in proc.stdout, proc.stdout
    return [line for line in proc.stdout.splitlines() if _PROBLEM.search(line)]
