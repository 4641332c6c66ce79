"""Test-session settings: compiled kernels go to a per-session cache directory, so tests
never read or write the user's ~/.cache/graphc and each run starts from a known state."""

import os

import pytest


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
