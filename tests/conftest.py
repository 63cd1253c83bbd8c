"""Session-wide settings: one shared AOTI cache for the whole run (compiled artifacts are reused
across test modules and by the app server the tests launch), offline Hub, no analytics."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

_SESSION_CACHE = Path(os.environ.get("AOTI_TEST_CACHE_DIR") or tempfile.mkdtemp(prefix="aoti-test-cache-"))
os.environ["AOTI_TEST_CACHE_DIR"] = str(_SESSION_CACHE)  # pytest-xdist's workers start later and share it
os.environ["AOTI_CACHE_DIR"] = str(_SESSION_CACHE)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("AOTI_MEASURE_S", "0.2")  # timing new graphs against eager: the fewest rounds, to keep the run short


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    return _SESSION_CACHE


@pytest.fixture(scope="session")
def cache(cache_dir):
    import aoti

    return aoti.Cache(cache_dir)


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(items):
    """Groups for pytest-xdist (``--dist=loadgroup`` in pytest.ini): a module's tests share a worker, so
    its module-scoped builds happen once; the app's modules share one, so one server starts."""
    for item in items:
        group = "app" if item.path.parent.name == "app" else str(item.path.relative_to(item.config.rootpath))
        item.add_marker(pytest.mark.xdist_group(group))


@pytest.hookimpl(optionalhook=True)  # a pytest-xdist hook: absent without it
def pytest_xdist_node_collection_finished(node, ids):
    """Refuse to run ungrouped: a group split over workers starts its servers and builds once per worker
    (pytest 9.2 with pytest-xdist 3.8 silently stopped grouping, and the run took minutes longer)."""
    if node.config.getvalue("dist") == "loadgroup" and ids and not any("@" in i for i in ids):
        raise pytest.UsageError("pytest-xdist did not group the tests (--dist=loadgroup): check the pytest and "
                                "pytest-xdist versions in requirements-dev.txt")
