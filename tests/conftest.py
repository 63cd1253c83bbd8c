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


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    return _SESSION_CACHE


@pytest.fixture(scope="session")
def cache(cache_dir):
    import aoti

    return aoti.Cache(cache_dir)


# The longest groups (seconds of test time on 2 cores) start first, so the short ones fill the workers'
# ends rather than one worker running a long group alone at the end.
_LONGEST_FIRST = ("app", "tests/zerogpu/test_app_on_zerogpu.py", "tests/aoti/test_compile_apply.py",
                  "tests/engines/test_lightweight.py", "tests/aoti/transforms/test_quantize.py")


def _group(item: pytest.Item) -> str:
    """A module's tests share a worker, so its module-scoped builds happen once; the app's modules share
    one, so one server starts. The benchmark smoke runs share nothing (each is its own process): one
    group each, so they spread over the workers."""
    if item.path.parent.name == "app":
        return "app"
    if item.path.parent.name == "benchmarks":
        return f"smoke-{item.name}"
    return str(item.path.relative_to(item.config.rootpath))


def _rank(group: str) -> int:
    if group in _LONGEST_FIRST:
        return _LONGEST_FIRST.index(group)
    return len(_LONGEST_FIRST) + (0 if group.startswith("smoke-") else 1)


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(items):
    """Groups for pytest-xdist (``--dist=loadgroup`` in pytest.ini), the longest first."""
    for item in items:
        item.add_marker(pytest.mark.xdist_group(_group(item)))
    items.sort(key=lambda item: _rank(_group(item)))  # stable: each module keeps its order


@pytest.hookimpl(optionalhook=True)  # a pytest-xdist hook: absent without it
def pytest_xdist_node_collection_finished(node, ids):
    """Refuse to run ungrouped: a group split over workers starts its servers and builds once per worker
    (pytest 9.2 with pytest-xdist 3.8 silently stopped grouping, and the run took minutes longer)."""
    if node.config.getvalue("dist") == "loadgroup" and ids and not any("@" in i for i in ids):
        raise pytest.UsageError("pytest-xdist did not group the tests (--dist=loadgroup): check the pytest and "
                                "pytest-xdist versions in requirements-dev.txt")
