"""Shared fixtures. The datapath and e2e tiers load the real programs into the running kernel and
use a lab whose namespaces are unique to this run; everything is removed at the end."""

from __future__ import annotations

import os
import shutil

import pytest


@pytest.fixture(scope="session", autouse=True)
def state_dir(tmp_path_factory):
    """Each run keeps its stores in a directory of its own, never in /var/lib/eniplane."""
    d = tmp_path_factory.mktemp("state")
    os.environ["ENIPLANE_STATE_DIR"] = str(d)
    yield d


def pytest_collection_modifyitems(config, items):
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root: loads BPF and creates network namespaces")
    for item in items:
        if "tests/unit" not in str(item.fspath):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def lab():
    from eniplane.lab import Lab

    with Lab.create() as lab:
        yield lab


@pytest.fixture(scope="session")
def node(lab):
    """A node that is up in the lab's node namespace (xdp_fabric on fab0)."""
    from eniplane import node as nodemod

    name = f"{lab.prefix}-e2e"
    nodemod.up(name, lab.fabric_if, lab.fabric_ip, lab.node_ns)
    yield name
    if nodemod.is_up(name):
        nodemod.down(name)


@pytest.fixture(scope="session")
def dp_node(lab):
    """Loaded and pinned but attached nowhere: driven through BPF_PROG_TEST_RUN only."""
    from eniplane import loader, paths

    name = f"{lab.prefix}-dp"
    fds = loader.compile_and_pin(name)
    for fd in fds.values():
        os.close(fd)
    yield name
    shutil.rmtree(paths.pin_dir(name), ignore_errors=True)


@pytest.fixture(scope="session")
def harness(lab):
    """Kernel and reference model side by side (tests/model/harness.py), on a node of its own."""
    import sys
    from pathlib import Path

    from eniplane import loader, paths

    sys.path.insert(0, str(Path(__file__).resolve().parent / "model"))
    from harness import DEFINES, Harness

    name = f"{lab.prefix}-model"
    for fd in loader.compile_and_pin(name, DEFINES).values():
        os.close(fd)
    h = Harness(lab, name)
    yield h
    h.close()
    shutil.rmtree(paths.pin_dir(name), ignore_errors=True)
