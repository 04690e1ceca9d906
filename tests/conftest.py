from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", help="also run tests marked slow")


def pytest_collection_modifyitems(config, items):
    cuda = False
    if any("gpu" in item.keywords for item in items):
        try:
            import torch

            cuda = torch.cuda.is_available()
        except ImportError:
            cuda = False
    for item in items:
        run_slow = config.getoption("--run-slow") or os.environ.get("EDITKIT_RUN_SLOW") == "1"
        if "slow" in item.keywords and not run_slow:
            item.add_marker(pytest.mark.skip(reason="slow: pass --run-slow"))
        if "gpu" in item.keywords and not cuda:
            item.add_marker(pytest.mark.skip(reason="needs CUDA"))


@pytest.fixture(scope="session", autouse=True)
def editkit_home(tmp_path_factory):
    """Tiny models are built once per session into a private cache."""
    home = os.environ.get("EDITKIT_TEST_HOME") or str(tmp_path_factory.mktemp("editkit-home"))
    os.environ["EDITKIT_HOME"] = home
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return Path(home)


@pytest.fixture(scope="session")
def tiny_clipseg(tmp_path_factory):
    """A tiny random CLIPSeg folder, built offline once per session."""
    from editkit.models.segmenter import build_tiny_clipseg

    return build_tiny_clipseg(tmp_path_factory.mktemp("tiny-clipseg"))


def pip_install_target(package: Path, target: Path) -> None:
    """Install a plugin package for real (pip builds and installs it) into `target`."""
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--disable-pip-version-check", "--target", str(target), str(package)],
        check=True, capture_output=True, text=True,
    )


@pytest.fixture(scope="session")
def plugin_sites(tmp_path_factory):
    """Separate site folders, each holding one pip-installed plugin package."""
    root = tmp_path_factory.mktemp("sites")
    sites = {}
    for name, path in {"testkit": FIXTURES / "editkit-testkit",
                       "broken": FIXTURES / "editkit-broken",
                       "dupe": FIXTURES / "editkit-dupe",
                       "csv": ROOT / "plugins" / "editkit-csv"}.items():
        site = root / name
        pip_install_target(path, site)
        sites[name] = site
    return sites


class Cli:
    """Runs the real `editkit` command in a subprocess, with chosen plugin sites on the path."""

    def __init__(self, cwd: Path, sites: dict[str, Path]):
        self.cwd = cwd
        self.sites = sites

    def env(self, plugins=(), **extra):
        env = dict(os.environ)
        env.pop("EDITKIT_LOAD_PLUGINS", None)
        env.pop("EDITKIT_DEBUG", None)
        env["PYTHONPATH"] = os.pathsep.join(str(self.sites[p]) for p in plugins)
        env.update({k: str(v) for k, v in extra.items()})
        return env

    def __call__(self, *args, plugins=(), timeout=300, **extra):
        return subprocess.run([sys.executable, "-m", "editkit", *map(str, args)],
                              cwd=self.cwd, env=self.env(plugins, **extra), capture_output=True,
                              text=True, timeout=timeout)

    def popen(self, *args, plugins=(), **extra):
        return subprocess.Popen([sys.executable, "-m", "editkit", *map(str, args)],
                                cwd=self.cwd, env=self.env(plugins, **extra),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture
def cli(tmp_path, plugin_sites):
    return Cli(tmp_path, plugin_sites)
