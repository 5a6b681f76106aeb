"""The executor process end to end through the agent double, with the fake runtime: launches."""

from __future__ import annotations

from typing import Any

import pytest

from tests.mesos.agent import AgentDouble
from tests.mesos.fake_runtime import journal
from tests.mesos.fixtures import agent, agent_factory, task  # noqa: F401

pytestmark = pytest.mark.timeout(90)


def test_group_of_two_finishes_with_own_exit_codes(agent: AgentDouble) -> None:  # noqa: F811
    agent.launch_group([task("a", "echo out-a; echo err-a >&2"),
                        task("b", "echo out-b")])
    assert agent.wait_terminal("a")["state"] == "TASK_FINISHED"
    assert agent.wait_terminal("b")["state"] == "TASK_FINISHED"
    assert agent.wait_executor_exit(30) == 0
    assert agent.states("a") == ["TASK_STARTING", "TASK_RUNNING", "TASK_FINISHED"]
    assert agent.states("b") == ["TASK_STARTING", "TASK_RUNNING", "TASK_FINISHED"]
    tasks = agent.sandbox / "tasks"
    assert (tasks / "a" / "stdout").read_text() == "out-a\n"
    assert (tasks / "a" / "stderr").read_text() == "err-a\n"
    assert (tasks / "b" / "stdout").read_text() == "out-b\n"
    assert agent.unacked == {}
    assert agent.violations == []
    events = [e["event"] for e in journal(agent.sandbox)]
    assert events.count("boot") == 1 and events[-1] == "destroy"
    boot = journal(agent.sandbox)[0]
    # two tasks of 0.5 cpus + the executor's 0.1 → 2 vCPUs; 96 + 96 + 32 MB
    assert (boot["vcpus"], boot["memory_mib"]) == (2, 224)


def test_failing_task_kills_sibling_and_reports_exit_code(agent: AgentDouble) -> None:  # noqa: F811
    agent.launch_group([task("bad", "sleep 0.5; exit 3"), task("long", "sleep 60")])
    bad = agent.wait_terminal("bad")
    assert bad["state"] == "TASK_FAILED"
    assert "status 3" in bad["message"]
    long = agent.wait_terminal("long")
    assert long["state"] == "TASK_KILLED"
    assert agent.states("long") == ["TASK_STARTING", "TASK_RUNNING", "TASK_KILLING",
                                    "TASK_KILLED"]
    assert agent.wait_executor_exit(30) == 0
    assert agent.violations == []


def test_finished_task_does_not_stop_siblings(agent: AgentDouble) -> None:  # noqa: F811
    agent.launch_group([task("quick", "true"), task("slow", "sleep 1.5; echo done")])
    assert agent.wait_terminal("quick")["state"] == "TASK_FINISHED"
    assert agent.wait_terminal("slow")["state"] == "TASK_FINISHED"
    assert (agent.sandbox / "tasks" / "slow" / "stdout").read_text() == "done\n"
    assert agent.violations == []


def test_lone_task_logs_into_the_sandbox(agent: AgentDouble) -> None:  # noqa: F811
    agent.heartbeat()
    agent.message(b"hello executor")  # ignored, like ERROR: neither may disturb the executor
    agent.error("a test error")
    agent.launch(task("solo", "echo solo-out; echo solo-err >&2; exit 0"))
    assert agent.wait_terminal("solo")["state"] == "TASK_FINISHED"
    assert agent.wait_executor_exit(30) == 0
    assert "solo-out" in (agent.sandbox / "stdout").read_text()
    assert "solo-err" in (agent.sandbox / "stderr").read_text()
    assert (agent.sandbox / "hypervm-executor.log").exists()
    assert agent.violations == []


def test_signal_death_is_in_the_message(agent: AgentDouble) -> None:  # noqa: F811
    agent.launch(task("sig", "kill -SEGV $$"))
    status = agent.wait_terminal("sig")
    assert status["state"] == "TASK_FAILED"
    assert "SIGSEGV" in status["message"]


def test_an_oom_kill_is_a_memory_limitation_naming_the_task(agent: AgentDouble) -> None:  # noqa: F811
    agent.launch_group([task("hog", "kill -KILL $$", img="fake/oom",
                             resources=[{"name": "mem", "type": "SCALAR", "scalar": {"value": 64}},
                                        {"name": "disk", "type": "SCALAR",
                                         "scalar": {"value": 100}}]),
                        task("peer", "sleep 60")])
    status = agent.wait_terminal("hog")
    assert status["state"] == "TASK_FAILED"
    assert status["reason"] == "REASON_CONTAINER_LIMITATION_MEMORY"
    assert "task hog ran out of its memory of 64 MB" in status["message"]
    assert "SIGKILL" in status["message"]
    assert agent.wait_terminal("peer")["state"] == "TASK_KILLED"
    boot = journal(agent.sandbox)[0]
    # each container is bounded by its task's resources: mem, the default pids, disk
    assert boot["containers"]["hog"]["limits"] == [64, 4096, 100]
    assert boot["containers"]["peer"]["limits"] == [96, 4096, None]


def test_a_sigkill_without_oom_has_no_memory_reason(agent: AgentDouble) -> None:  # noqa: F811
    agent.launch(task("killed", "kill -KILL $$"))
    status = agent.wait_terminal("killed")
    assert status["state"] == "TASK_FAILED" and "reason" not in status


def test_image_entrypoint_and_cmd_are_used(agent: AgentDouble) -> None:  # noqa: F811
    agent.launch(task("ep", None, img="fake/entrypoint"))
    assert agent.wait_terminal("ep")["state"] == "TASK_FINISHED"
    assert (agent.sandbox / "stdout").read_text() == "entry default\n"


@pytest.mark.parametrize("tasks, field", [
    ([task("noimg", "true", container=None)], "task_group.tasks[0].container"),
    ([task("ok", "true"), task("badmem", "true", resources=[
        {"name": "mem", "type": "SCALAR", "scalar": {"value": -5}}])],
     "task_group.tasks[1].resources.mem"),
    ([task("badcmd", None, command={"shell": True})], "task_group.tasks[0].command.value"),
])
def test_invalid_task_group_fails_every_task(agent: AgentDouble, tasks: Any,  # noqa: F811
                                              field: str) -> None:
    agent.launch_group(tasks)
    for t in tasks:
        status = agent.wait_terminal(t["task_id"]["value"])
        assert status["state"] == "TASK_FAILED"
        assert status["reason"] == "REASON_TASK_GROUP_INVALID"
        assert field in status["message"]
        assert agent.states(t["task_id"]["value"]) == ["TASK_FAILED"]
    assert agent.wait_executor_exit(30) == 0
    assert journal(agent.sandbox) == []  # no pod was ever created
    assert sorted(p.name for p in agent.sandbox.iterdir()) == [
        "hypervm-executor.log", "stderr", "stdout"]
    assert agent.violations == []


def test_unknown_image_fails_with_the_cause(agent: AgentDouble) -> None:  # noqa: F811
    agent.launch(task("img", "true", img="library/unknown-image:1"))
    status = agent.wait_terminal("img")
    assert status["state"] == "TASK_FAILED"
    assert status["reason"] == "REASON_CONTAINER_LAUNCH_FAILED"
    assert "unknown-image" in status["message"] and "manifest unknown" in status["message"]
    assert agent.states("img") == ["TASK_STARTING", "TASK_FAILED"]
    assert agent.wait_executor_exit(30) == 0


def test_boot_failure_fails_the_group(agent: AgentDouble) -> None:  # noqa: F811
    agent.launch_group([task("x", "true", img="fake/boot-fails"), task("y", "true")])
    for tid in ("x", "y"):
        status = agent.wait_terminal(tid)
        assert status["state"] == "TASK_FAILED"
        assert "did not boot" in status["message"]
    assert agent.wait_executor_exit(30) == 0
    assert agent.violations == []


def test_command_not_found_is_exit_127(agent: AgentDouble) -> None:  # noqa: F811
    agent.launch_group([task("nf", None,
                                   command={"shell": False, "value": "/no/such/binary"})])
    status = agent.wait_terminal("nf")
    assert status["state"] == "TASK_FAILED"
    assert "status 127" in status["message"]


def test_no_task_killing_without_the_capability(agent_factory: Any) -> None:  # noqa: F811
    double = agent_factory(task_killing_state=False)
    double.start_executor()
    double.wait_subscribed()
    double.launch(task("k", "sleep 60"))
    double.wait_state("k", "TASK_RUNNING")
    double.kill("k")
    assert double.wait_terminal("k")["state"] == "TASK_KILLED"
    assert "TASK_KILLING" not in double.states("k")
    assert double.violations == []


def test_output_is_rotated_by_size(agent_factory: Any) -> None:  # noqa: F811
    double = agent_factory(env={"HYPERVM_LOG_MAX_BYTES": "1000", "HYPERVM_LOG_BACKUPS": "2"})
    double.start_executor()
    double.wait_subscribed()
    double.launch_group([task("chatty", "i=0; while [ $i -lt 100 ]; do "
                                       "echo line-$i-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxx; "
                                       "i=$((i+1)); sleep 0.001; done")])
    assert double.wait_terminal("chatty")["state"] == "TASK_FINISHED"
    out = double.sandbox / "tasks" / "chatty"
    names = sorted(p.name for p in out.iterdir())
    assert names == ["stderr", "stdout", "stdout.1", "stdout.2"]
    assert all(p.stat().st_size <= 1000 for p in out.iterdir())
    assert "line-99-" in (out / "stdout").read_text()


def test_exit_waits_for_acks_then_gives_up(agent_factory: Any) -> None:  # noqa: F811
    import time

    double = agent_factory(auto_ack=False, env={"HYPERVM_EXECUTOR_ACK_TIMEOUT": "2"})
    double.start_executor()
    double.wait_subscribed()
    double.launch(task("t", "true"))
    double.wait_terminal("t")
    finished = time.monotonic()
    assert double.process is not None
    time.sleep(1)
    assert double.process.poll() is None  # still waiting for the acknowledgements
    assert double.wait_executor_exit(15) == 0
    assert 1.9 <= time.monotonic() - finished < 10
    assert len(double.unacked) == 3


def test_duplicate_task_id_is_rejected_without_crashing(agent: AgentDouble) -> None:  # noqa: F811
    agent.launch(task("dup", "sleep 1.5"))
    agent.wait_state("dup", "TASK_RUNNING")
    agent.launch_group([task("dup", "true"), task("fresh", "true")])
    fresh = agent.wait_terminal("fresh")
    assert fresh["state"] == "TASK_FAILED" and "already launched" in fresh["message"]
    assert agent.wait_terminal("dup")["state"] == "TASK_FINISHED"
    assert agent.states("dup") == ["TASK_STARTING", "TASK_RUNNING", "TASK_FINISHED"]
    assert agent.wait_executor_exit(30) == 0


def test_executor_authentication_token_is_sent(agent_factory: Any) -> None:  # noqa: F811
    double = agent_factory(auth_token="s3cr3t-token")
    double.start_executor()
    double.wait_subscribed()
    double.launch(task("auth", "true"))
    assert double.wait_terminal("auth")["state"] == "TASK_FINISHED"
    assert double.wait_executor_exit(30) == 0
    assert double.rejected == [] and double.violations == []


def test_missing_token_is_refused(agent_factory: Any) -> None:  # noqa: F811
    double = agent_factory(auth_token="s3cr3t-token",
                           env={"MESOS_EXECUTOR_AUTHENTICATION_TOKEN": ""})
    double.start_executor()
    double.wait_for(lambda: double.rejected, 20, "a refused SUBSCRIBE")
    assert double.rejected[0][0] == 401
    assert double.wait_executor_exit(30) != 0  # it cannot subscribe: it gives up, failing


def test_ports_and_tenant_reach_the_pod(agent: AgentDouble) -> None:  # noqa: F811
    resources = [{"name": "cpus", "type": "SCALAR", "scalar": {"value": 0.5},
                  "allocation_info": {"role": "team-a"}},
                 {"name": "ports", "type": "RANGES", "ranges": {"range": [
                     {"begin": 31010, "end": 31011}]}, "allocation_info": {"role": "team-a"}}]
    discovery = {"visibility": "FRAMEWORK", "ports": {"ports": [{"number": 8080}]}}
    agent.launch(task("p", "true", resources=resources, discovery=discovery))
    assert agent.wait_terminal("p")["state"] == "TASK_FINISHED"
    boot = journal(agent.sandbox)[0]
    assert boot["tenant"] == "team-a"
    assert boot["ports"] == [[31010, 8080, "tcp"], [31011, 31011, "tcp"]]
    assert agent.violations == []
