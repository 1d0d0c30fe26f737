"""Shared fixtures.

- `lab`: one 3-node lab for the whole session (manager and agents running), with a unique name
  so it never meets a developer's own lab; always taken down, also when a test fails, setup
  fails, or the run is interrupted (Ctrl-C, SIGTERM).
- `make_lab`: a factory for tests that need a lab of their own (one they may break); every lab
  it made is taken down after the test.
- `docker_env`: os.environ plus DOCKER_HOST pointing at the session lab's docker socket.

Tests marked `root`, and every test that uses `lab` or `make_lab`, are skipped when not root.
"""

from __future__ import annotations

import atexit
import os
import secrets
import signal
from collections.abc import Callable, Iterator

import pytest

from shoal.lab import Lab, lab_down, lab_up

NOT_ROOT = "needs root: builds network namespaces (run as root, e.g. `sudo make test`)"
LAB_FIXTURES = {"lab", "make_lab", "docker_env"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if LAB_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.root)
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason=NOT_ROOT)
    for item in items:
        if item.get_closest_marker("root"):
            item.add_marker(skip)


def unique_lab_name() -> str:
    """'t' and 4 hex digits: a valid lab name ([a-z0-9]{1,8}) no developer would pick."""
    return "t" + secrets.token_hex(2)


class _Teardown:
    """Takes labs down exactly once: from the fixture's finally, or at interpreter exit if the
    fixture never got there (pytest killed mid-test by Ctrl-C or SIGTERM)."""

    def __init__(self) -> None:
        self.names: list[str] = []
        atexit.register(self.run)

    def add(self, name: str) -> None:
        self.names.append(name)

    def run(self) -> None:
        errors = []
        while self.names:
            name = self.names.pop()
            try:
                lab_down(name)
            except Exception as exc:  # keep taking the other labs down
                errors.append(f"{name}: {exc}")
        if errors:
            raise RuntimeError("lab teardown failed: " + "; ".join(errors))


def _sigterm_as_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture(scope="session")
def lab() -> Iterator[Lab]:
    if os.geteuid() != 0:
        pytest.skip(NOT_ROOT)
    previous = signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    teardown = _Teardown()
    name = unique_lab_name()
    teardown.add(name)  # before lab_up: a half-made lab is taken down too
    try:
        yield lab_up(name, nodes=3)
    finally:
        try:
            teardown.run()
        finally:
            signal.signal(signal.SIGTERM, previous)


@pytest.fixture
def make_lab() -> Iterator[Callable[..., Lab]]:
    if os.geteuid() != 0:
        pytest.skip(NOT_ROOT)
    teardown = _Teardown()

    def make(nodes: int = 3, **kwargs: object) -> Lab:
        name = unique_lab_name()
        teardown.add(name)
        return lab_up(name, nodes=nodes, **kwargs)  # type: ignore[arg-type]

    try:
        yield make
    finally:
        teardown.run()


@pytest.fixture
def docker_env(lab: Lab) -> dict[str, str]:
    return dict(os.environ, DOCKER_HOST=lab.docker_host)
