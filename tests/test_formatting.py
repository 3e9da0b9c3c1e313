"""The tree is formatted with ruff's formatter (settings in pyproject.toml)."""

import os
import shutil
import subprocess
import sys

ROOT = os.path.join(os.path.dirname(__file__), "..")


def test_tree_is_formatted():
  ruff = shutil.which("ruff", path=os.path.dirname(sys.executable)) or shutil.which("ruff")
  assert ruff, "ruff is a dev dependency: pip install -e '.[dev]'"
  out = subprocess.run([ruff, "format", "--check", "."], cwd=ROOT, capture_output=True, text=True)
  assert out.returncode == 0, "run `ruff format .`:\n" + out.stdout + out.stderr
