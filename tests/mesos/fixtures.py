"""pytest fixtures for the Mesos tests (import them into a test module: no conftest here)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.mesos.agent import AgentDouble


@pytest.fixture
def agent_factory(tmp_path: Path) -> Iterator[Callable[..., AgentDouble]]:
    """Make agent doubles (each with its own sandbox); all are stopped at teardown, their
    executor killed, and the executor log printed for failed tests."""
    made: list[AgentDouble] = []

    def make(**kwargs: Any) -> AgentDouble:
        agent = AgentDouble(tmp_path / f"agent{len(made)}", **kwargs)
        made.append(agent)
        return agent

    yield make
    for agent in made:
        agent.stop()
        print(agent.executor_log()[-6000:])


@pytest.fixture
def agent(agent_factory: Callable[..., AgentDouble]) -> AgentDouble:
    """An agent double whose executor has subscribed."""
    double = agent_factory()
    double.start_executor()
    double.wait_subscribed()
    return double
