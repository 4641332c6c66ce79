"""Test-session settings: compiled kernels go to a per-session cache directory, so tests
never read or write the user's ~/.cache/graphc and each run starts from a known state.

Tests that take more than about 5 s are marked ``slow``: ``python -m pytest -m "not slow"`` is
the quick selection; CI (``.ci/run``) runs everything."""

import os

import pytest


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than about 5 s; deselect with "
                                       "-m \"not slow\" (CI runs every test)")
    config.addinivalue_line("markers", "distributed: data-parallel training on a local Ray "
                                       "cluster; skipped without the distributed extra (Ray)")


@pytest.fixture(scope="session", autouse=True)
def kernel_cache_dir(tmp_path_factory):
    old = os.environ.get("GRAPHC_CACHE_DIR")
    path = tmp_path_factory.mktemp("graphc-cache")
    os.environ["GRAPHC_CACHE_DIR"] = str(path)
    yield path
    if old is None:
        os.environ.pop("GRAPHC_CACHE_DIR", None)
    else:
        os.environ["GRAPHC_CACHE_DIR"] = old


@pytest.fixture(scope="session", autouse=True)
def check_every_pass():
    """gc.compile runs graphc.check_graph after every optimizing pass (passes/pipeline.py)."""
    old = os.environ.get("GRAPHC_CHECK_PASSES")
    os.environ["GRAPHC_CHECK_PASSES"] = "1"
    yield
    if old is None:
        os.environ.pop("GRAPHC_CHECK_PASSES", None)
    else:
        os.environ["GRAPHC_CHECK_PASSES"] = old
