"""pymesos' executor driver: its three bugs (shown on the raw driver) and our fixes, in-process
against the agent double; the environment settings."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from executor.mesos.driver import make_driver, parse_duration, settings_from_env
from hypervm.errors import InvalidSpec
from tests.mesos.agent import AgentDouble
from tests.mesos.fixtures import agent_factory  # noqa: F401

pytestmark = pytest.mark.timeout(60)


class Recorder:
    """A minimal pymesos Executor recording its callbacks."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.event = threading.Event()

    def _record(self, name: str, value: Any = None) -> None:
        self.calls.append((name, value))
        self.event.set()

    def registered(self, driver: Any, executor_info: Any, framework_info: Any, agent: Any) -> None:
        self._record("registered")

    def reregistered(self, driver: Any, agent: Any) -> None:
        self._record("reregistered")

    def disconnected(self, driver: Any) -> None:
        self._record("disconnected")

    def launchTask(self, driver: Any, task: Any) -> None:  # noqa: N802
        self._record("launch", task["task_id"]["value"])

    def killTask(self, driver: Any, task_id: Any) -> None:  # noqa: N802
        self._record("kill", None)

    def killTaskWithPolicy(self, driver: Any, task_id: Any, policy: Any) -> None:  # noqa: N802
        self._record("kill", policy)

    def shutdown(self, driver: Any) -> None:
        self._record("shutdown")

    def names(self) -> list[str]:
        return [c[0] for c in self.calls]


def wait(predicate: Any, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.fixture
def env_for(monkeypatch: pytest.MonkeyPatch) -> Any:
    def apply(double: AgentDouble) -> dict[str, str]:
        env = double.executor_env()
        for key, value in env.items():
            if key.startswith("MESOS_"):
                monkeypatch.setenv(key, value)
        return env

    return apply


@pytest.fixture
def drivers() -> Iterator[list[Any]]:
    made: list[Any] = []
    yield made
    for driver in made:
        driver.stop()
        driver.join()


def status(task_id: str, state: str) -> dict[str, Any]:
    return {"task_id": {"value": task_id}, "state": state}


def start(double: AgentDouble, driver: Any, drivers: list[Any]) -> None:
    drivers.append(driver)
    driver.start()
    double.wait_subscribed()
    wait(lambda: driver.connected and "registered" in driver.executor.names())
    double.launch({"task_id": {"value": "t"}})
    wait(lambda: double.checker.launched_tasks)


def test_raw_pymesos_reads_checkpoint_0_as_true(agent_factory: Any, env_for: Any) -> None:  # noqa: F811
    from pymesos import MesosExecutorDriver

    double = agent_factory(checkpoint=False, plain_path=True)
    env = env_for(double)
    assert os.environ["MESOS_CHECKPOINT"] == "0"
    assert MesosExecutorDriver(Recorder()).checkpoint is True  # the bug
    ours = make_driver(Recorder(), settings_from_env(env), lambda: None)
    assert ours.checkpoint is False


def resubscribe_updates(double: AgentDouble, driver: Any, drivers: list[Any]) -> list[str]:
    start(double, driver, drivers)
    driver.sendStatusUpdate(status("t", "TASK_STARTING"))
    driver.sendStatusUpdate(status("t", "TASK_RUNNING"))
    double.wait_for(lambda: len(double.unacked) == 2, 10, "two updates")
    double.restart(down_for=0.5)
    double.wait_for(lambda: len(double.subscribes) == 2 and double.subscribed, 20,
                    "the re-SUBSCRIBE")
    return [u["status"]["state"] for u in double.subscribes[-1]["unacknowledged_updates"]]


def test_raw_pymesos_never_resends_updates(agent_factory: Any, env_for: Any,  # noqa: F811
                                           drivers: list[Any]) -> None:
    from pymesos import MesosExecutorDriver

    double = agent_factory(auto_ack=False, backoff_max="0.5secs", plain_path=True)
    env_for(double)
    assert resubscribe_updates(double, MesosExecutorDriver(Recorder()), drivers) == []


def test_unacknowledged_updates_are_resent(agent_factory: Any, env_for: Any,  # noqa: F811
                                           drivers: list[Any]) -> None:
    double = agent_factory(auto_ack=False, backoff_max="0.5secs")
    env = env_for(double)
    driver = make_driver(Recorder(), settings_from_env(env), lambda: None)
    states = resubscribe_updates(double, driver, drivers)
    assert states == ["TASK_STARTING", "TASK_RUNNING"]
    assert double.ack_all() == 2
    wait(lambda: driver.unacknowledged() == [])
    assert double.violations == []


def test_update_while_disconnected_is_kept(agent_factory: Any, env_for: Any,  # noqa: F811
                                           drivers: list[Any]) -> None:
    double = agent_factory(backoff_max="0.5secs")
    env = env_for(double)
    driver = make_driver(Recorder(), settings_from_env(env), lambda: None)
    start(double, driver, drivers)
    double.restart(down_for=0.0)
    driver.sendStatusUpdate(status("t", "TASK_FINISHED"))  # possibly before the re-SUBSCRIBE
    double.wait_for(lambda: "TASK_FINISHED" in double.states("t"), 20, "the FINISHED update")
    wait(lambda: driver.unacknowledged() == [])
    assert double.violations == []


def test_raw_pymesos_killpgs_its_own_group(agent_factory: Any, env_for: Any,  # noqa: F811
                                           drivers: list[Any],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from pymesos import MesosExecutorDriver

    killed: list[tuple[int, int]] = []
    monkeypatch.setattr(os, "killpg", lambda pgid, sig: killed.append((pgid, sig)))
    double = agent_factory(shutdown_grace="0.1secs", plain_path=True)
    env_for(double)
    driver = MesosExecutorDriver(Recorder())
    start(double, driver, drivers)
    double.shutdown()
    wait(lambda: killed)
    assert killed[0][0] == 0  # 0: the caller's own process group


def test_shutdown_runs_our_failsafe_and_keeps_the_driver(agent_factory: Any,  # noqa: F811
                                                        env_for: Any, drivers: list[Any],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    killed: list[Any] = []
    monkeypatch.setattr(os, "killpg", lambda *a: killed.append(a))
    failsafe = threading.Event()
    double = agent_factory(shutdown_grace="0.3secs")
    env = env_for(double)
    recorder = Recorder()
    driver = make_driver(recorder, settings_from_env(env), failsafe.set)
    start(double, driver, drivers)
    double.shutdown()
    wait(lambda: "shutdown" in recorder.names())
    driver.sendStatusUpdate(status("t", "TASK_KILLED"))  # still possible after SHUTDOWN
    double.wait_state("t", "TASK_KILLED")
    assert failsafe.wait(5)
    assert killed == []


def test_kill_policy_reaches_the_executor(agent_factory: Any, env_for: Any,  # noqa: F811
                                          drivers: list[Any]) -> None:
    double = agent_factory()
    env = env_for(double)
    recorder = Recorder()
    driver = make_driver(recorder, settings_from_env(env), lambda: None)
    start(double, driver, drivers)
    double.kill("t", grace_s=1.5)
    wait(lambda: "kill" in recorder.names())
    assert dict(recorder.calls)["kill"] == {"grace_period": {"nanoseconds": 1500000000}}


def test_raw_pymesos_misses_an_agent_addressed_by_its_pid(agent_factory: Any,  # noqa: F811
                                                         env_for: Any) -> None:
    """pymesos POSTs to the plain /api/v1/executor: under mesos-local that is the master's
    operator API; a real agent's executor API is /<MESOS_SLAVE_PID id>/api/v1/executor."""
    from pymesos import MesosExecutorDriver

    double = agent_factory()
    env_for(double)
    driver = MesosExecutorDriver(Recorder())
    with pytest.raises(RuntimeError, match="HTTP 404"):  # its IO thread dies, SIGINTs us
        driver.start()
        double.wait_for(lambda: False, 10, "the raw driver to give up")
    assert not double.subscribed and not double.ever_subscribed
    assert "call to /api/v1/executor" in double.violations[0]


@pytest.mark.parametrize("slave_pid", [True, False])
def test_ours_addresses_the_agent_as_mesos_does(agent_factory: Any, env_for: Any,  # noqa: F811
                                                drivers: list[Any], slave_pid: bool) -> None:
    double = agent_factory(slave_pid=slave_pid)
    env = env_for(double)
    if not slave_pid:
        os.environ.pop("MESOS_SLAVE_PID", None)
    driver = make_driver(Recorder(), settings_from_env(env), lambda: None)
    start(double, driver, drivers)
    driver.sendStatusUpdate(status("t", "TASK_RUNNING"))
    double.wait_state("t", "TASK_RUNNING", 10)
    assert double.violations == []


def test_backoff_respects_the_maximum(agent_factory: Any, env_for: Any) -> None:  # noqa: F811
    double = agent_factory(backoff_max="0.25secs")
    driver = make_driver(Recorder(), settings_from_env(env_for(double)), lambda: None)
    assert all(0 <= driver._backoff(n) <= 0.25 for n in range(20))


@pytest.mark.parametrize("text, seconds", [
    ("5secs", 5.0), ("15mins", 900.0), ("100ms", 0.1), ("2.5secs", 2.5), ("1hrs", 3600.0),
    ("3days", 259200.0), ("10ns", 1e-8),
])
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text, "X") == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["5", "5 seconds", "", "-1secs", "secs"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(InvalidSpec) as info:
        parse_duration(text, "MESOS_RECOVERY_TIMEOUT")
    assert info.value.field == "MESOS_RECOVERY_TIMEOUT"


def base_env(**extra: str) -> dict[str, str]:
    env = {"MESOS_FRAMEWORK_ID": "f", "MESOS_EXECUTOR_ID": "e",
           "MESOS_AGENT_ENDPOINT": "127.0.0.1:5051", "MESOS_SANDBOX": "/tmp/s"}
    env.update(extra)
    return env


def test_settings_defaults_and_values() -> None:
    default = settings_from_env(base_env())
    assert (default.checkpoint, default.shutdown_grace_s, default.recovery_timeout_s,
            default.backoff_max_s) == (False, 5.0, 900.0, 2.0)
    custom = settings_from_env(base_env(MESOS_CHECKPOINT="1",
                                        MESOS_EXECUTOR_SHUTDOWN_GRACE_PERIOD="10secs",
                                        MESOS_RECOVERY_TIMEOUT="1mins",
                                        MESOS_EXECUTOR_AUTHENTICATION_TOKEN="tok"))
    assert (custom.checkpoint, custom.shutdown_grace_s, custom.recovery_timeout_s,
            custom.auth_token) == (True, 10.0, 60.0, "tok")


def test_settings_address_the_agent_by_its_pid() -> None:
    pid = settings_from_env(base_env(MESOS_SLAVE_PID="slave(1)@10.1.2.3:5051"))
    assert (pid.agent_endpoint, pid.api_path) == ("10.1.2.3:5051", "/slave(1)/api/v1/executor")
    plain = settings_from_env(base_env())
    assert (plain.agent_endpoint, plain.api_path) == ("127.0.0.1:5051", "/api/v1/executor")
    only_pid = {k: v for k, v in base_env(MESOS_SLAVE_PID="slave(2)@h:1").items()
                if k != "MESOS_AGENT_ENDPOINT"}
    assert settings_from_env(only_pid).api_path == "/slave(2)/api/v1/executor"


@pytest.mark.parametrize("env, field", [
    (base_env(MESOS_SLAVE_PID="slave(1)"), "MESOS_SLAVE_PID"),
    (base_env(MESOS_SLAVE_PID="slave(1)@h:1/x"), "MESOS_SLAVE_PID"),
    ({k: v for k, v in base_env().items() if k != "MESOS_AGENT_ENDPOINT"},
     "MESOS_AGENT_ENDPOINT"),
    (base_env(MESOS_CHECKPOINT="yes"), "MESOS_CHECKPOINT"),
    ({k: v for k, v in base_env().items() if k != "MESOS_EXECUTOR_ID"}, "MESOS_EXECUTOR_ID"),
    (base_env(MESOS_AGENT_ENDPOINT="http://x:1/"), "MESOS_AGENT_ENDPOINT"),
])
def test_settings_errors_name_the_variable(env: dict[str, str], field: str) -> None:
    with pytest.raises(InvalidSpec) as info:
        settings_from_env(env)
    assert info.value.field == field
