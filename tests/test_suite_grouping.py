"""`make test` keeps each test file in one pytest-xdist worker, so the long module fixtures (trained
runs, prepared datasets) are built once. If a pytest or pytest-xdist upgrade stops the grouping, the
suite still passes but takes far longer; this test makes that visible."""

import os

import pytest


def test_a_grouped_run_tags_every_test_with_its_file(request):
    if not os.environ.get("PYTEST_XDIST_WORKER") or not request.config.getoption("loadgroup", False):
        pytest.skip("only under `pytest -n N --dist loadgroup` (make test)")
    node_id = request.node.nodeid
    assert node_id.endswith("@tests/test_suite_grouping.py"), (
        f"{node_id!r} carries no xdist group: tests of one file may be split across workers "
        "(check the pytest pin in pyproject.toml's dev extras)")
