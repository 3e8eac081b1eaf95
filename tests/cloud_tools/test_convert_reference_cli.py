"""The reference converter's command line works without torch: torch is imported only
when a conversion runs, and its absence is then a one-line message, not a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "cloud_tools" / "edged_cloud" / "convert_reference.py"

# Installed before anything else runs: every import of torch fails, as on a machine
# without it, whether or not this venv has torch.
HIDE_TORCH = """\
import sys

class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, _NoTorch())
"""


def converter(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(HIDE_TORCH)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(site), *filter(None, [os.environ.get("PYTHONPATH")])])}
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def test_torch_is_really_hidden(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(HIDE_TORCH)
    done = subprocess.run([sys.executable, "-c", "import torch"], capture_output=True,
                          text=True, timeout=60, check=False,
                          env={**os.environ, "PYTHONPATH": str(site)})
    assert done.returncode == 1
    assert "No module named 'torch'" in done.stderr


def test_help_works_without_torch(tmp_path):
    done = converter(tmp_path, "--help")
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout
    assert "--source" in done.stdout and "--out" in done.stdout
    assert done.stderr == ""


def test_an_argument_error_works_without_torch(tmp_path):
    done = converter(tmp_path, "--sauce", "x")
    assert done.returncode == 2
    assert "unrecognized arguments: --sauce x" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_conversion_without_torch_says_how_to_get_it(tmp_path):
    done = converter(tmp_path, "--source", str(tmp_path / "in"), "--out", str(tmp_path / "out"))
    assert done.returncode == 1
    assert done.stderr.strip() == (
        "convert_reference needs torch: pip install 'edged-cloud[train]'")
    assert not (tmp_path / "out").exists()
