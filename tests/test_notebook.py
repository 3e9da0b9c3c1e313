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
    nbclient.NotebookClient(
      nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
  finally:
    if env_flags is not None:
      os.environ["XLA_FLAGS"] = env_flags
  outputs = "".join(
    o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
  )
  assert "mass on same-cluster samples" in outputs
  # The library's step trained the head: the last JSD is well below the first.
  jsd = [
    float(l.split("JSD")[1].split()[0])
    for l in outputs.splitlines()
    if l.startswith("step") and "uniform rows" in l
  ]
  assert len(jsd) == 5 and jsd[-1] < 0.5 * jsd[0], jsd
  # The figure is shown inline and nothing is written to disk.
  assert any(
    "image/png" in o.get("data", {})
    for c in nb.cells
    if c.cell_type == "code"
    for o in c.get("outputs", [])
  )
  assert not list(tmp_path.iterdir())
