"""A non-editable install, laid out as ``install.sh --pi`` does: /opt/edge/venv beside /opt/edge/models.

The package is copied into a fresh venv's site-packages (what ``pip install .``
puts there: no checkout around it); its dependencies come from this test
venv through a .pth file.  ``edge run`` with no config must find the bundles
beside the venv, and say where it looked when they are not there.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig

import pytest

from .conftest import MODELS, ROOT


@pytest.fixture()
def appliance(tmp_path):
    prefix = tmp_path / "opt" / "edge"
    venv = prefix / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    shutil.copytree(ROOT / "edge", os.path.join(site, "edge"), ignore=shutil.ignore_patterns("__pycache__"))
    with open(os.path.join(site, "deps.pth"), "w") as handle:
        handle.write(sysconfig.get_paths()["purelib"] + "\n")
    return prefix, python


def run(python, tmp_path, *args):
    env = {k: v for k, v in os.environ.items() if k not in ("EDGE_MODELS_DIR", "EDGE_CONFIG", "PYTHONPATH")}
    env["EDGE_STATE_DIR"] = str(tmp_path / "state")
    return subprocess.run([str(python), "-m", "edge.cli", *args], cwd=tmp_path, capture_output=True, text=True,
                          env=env, timeout=300)


def test_the_installed_package_is_the_copy_not_the_checkout(appliance, tmp_path):
    _, python = appliance
    where = subprocess.run([str(python), "-c", "import edge; print(edge.__file__)"], capture_output=True, text=True,
                           cwd=tmp_path, check=True).stdout
    assert str(tmp_path) in where and str(ROOT) not in where


def test_a_non_editable_install_finds_the_models_beside_its_venv(appliance, tmp_path):
    prefix, python = appliance
    missing = run(python, tmp_path, "run")
    assert missing.returncode == 66, missing.stderr
    assert str(prefix / "models" / "yunet") + " does not exist" in missing.stderr
    shutil.copytree(MODELS, prefix / "models", ignore=shutil.ignore_patterns("eval", "*.png"))
    result = run(python, tmp_path, "run")
    assert result.returncode == 0, result.stderr
    granted = [line for line in result.stdout.splitlines() if line.startswith("granted")]
    assert len(granted) == 2 and "Emmanuel Macron" in granted[0]


def test_the_device_wheel_carries_the_runtime_and_not_the_model_tool(tmp_path):
    """``pip install .`` (what install-pi.sh runs) must not put the model tool, or a package named ``tools``, on the door."""
    # Built from a copy: setuptools writes build/ and *.egg-info beside the pyproject it builds.
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", ".venv", ".cache", "build", "*.egg-info",
                                                                "__pycache__", "models", "tests"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp_path), str(source)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    import zipfile

    (wheel,) = tmp_path.glob("edge_door-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names}
    assert "edge" in top and any(name.startswith("edge/demo/") for name in names)
    assert not top & {"tools", "edge_model"}, sorted(top)
    entry_points = next(name for name in names if name.endswith("entry_points.txt"))
    scripts = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "edge = edge.cli:main" in scripts and "edge-model" not in scripts
