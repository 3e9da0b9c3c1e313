"""The quickstart notebook runs top to bottom (executed, not just parsed)."""

import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_quickstart_notebook_executes(tmp_path):
  nbformat = pytest.importorskip("nbformat")
  nbclient = pytest.importorskip("nbclient")
  nb = nbformat.read(os.path.join(ROOT, "examples", "quickstart.ipynb"), as_version=4)
  env_flags = os.environ.pop("XLA_FLAGS", None)  # the kernel is a fresh process
  try:
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
  finally:
    if env_flags is not None:
      os.environ["XLA_FLAGS"] = env_flags
  outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                    for o in c.get("outputs", []))
  assert "mass on same-cluster samples" in outputs
  assert (tmp_path / "quickstart_adjacency.png").stat().st_size > 0
