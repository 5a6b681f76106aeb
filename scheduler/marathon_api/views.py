"""The scheduler's rows in Marathon's JSON shapes (apps, tasks, deployments, queue, events). Pure.

Only fields Marathon's own answers carry are written (a strict client such as the PyPI
``marathon`` package builds objects from every key it gets), so our own details (instance
index, exit code, message) stay out of the app and task objects; ``/v1/pods`` has them.
"""

from __future__ import annotations

from typing import Any

from scheduler import lifecycle
from scheduler.marathon_api.rolling import DEFAULT_STRATEGY
from scheduler.marathon_api.state import START, STOP, Deployment, timestamp

#: fields of an app definition that are written back (the rest is accepted without effect)
APP_FIELDS = ("id", "cmd", "args", "cpus", "mem", "disk", "instances", "env", "labels",
              "healthChecks", "portDefinitions", "container", "executor", "requirePorts",
              "taskKillGracePeriodSeconds", "backoffSeconds", "backoffFactor",
              "maxLaunchDelaySeconds", "upgradeStrategy")
APP_DEFAULTS: dict[str, Any] = {
    "cmd": None, "args": None, "cpus": 1.0, "mem": 128.0, "disk": 0.0, "instances": 1,
    "env": {}, "labels": {}, "healthChecks": [], "backoffSeconds": 1, "backoffFactor": 1.15,
    "maxLaunchDelaySeconds": 300, "upgradeStrategy": DEFAULT_STRATEGY, "requirePorts": False}
#: states that count as a task failure (the failures metric)
FAILED = frozenset({"TASK_FAILED", "TASK_ERROR", "TASK_LOST", "TASK_DROPPED", "TASK_GONE",
                    "TASK_UNKNOWN", "TASK_GONE_BY_OPERATOR"})


def definition(raw: dict[str, Any]) -> dict[str, Any]:
    """The app definition as Marathon returns it (defaults filled in)."""
    out = {k: v for k, v in APP_DEFAULTS.items()}
    out.update({k: raw[k] for k in APP_FIELDS if k in raw})
    if raw.get("healthChecks"):
        out["healthChecks"] = [_health_check(hc) for hc in raw["healthChecks"]]
    return out


def _health_check(hc: dict[str, Any]) -> dict[str, Any]:
    # the values the executor applies when a field is not given (Mesos' HealthCheck defaults)
    out = {"protocol": "HTTP", "gracePeriodSeconds": 10, "intervalSeconds": 10,
           "timeoutSeconds": 20, "maxConsecutiveFailures": 3, "delaySeconds": 15, **hc}
    if out["protocol"] in ("HTTP", "MESOS_HTTP") and "path" not in out:
        out["path"] = "/"
    return out


def task(t: dict[str, Any], app_id: str, times: Any, version: str | None, role: str
         ) -> dict[str, Any]:
    """A task row (as the workload view has it) → Marathon's task object."""
    out: dict[str, Any] = {
        "id": t["taskId"], "appId": app_id, "host": t["host"],
        "ports": [p["hostPort"] for p in t["ports"]], "servicePorts": [],
        "slaveId": t["agentId"], "state": t["state"], "ipAddresses": [], "localVolumes": [],
        "stagedAt": timestamp(times["staged_at"]) if times else None,
        "startedAt": timestamp(times["started_at"]) if times and times["started_at"] else None,
        "version": (times["version"] if times and times["version"] else version),
        "role": role}
    if t["healthy"] is not None:
        out["healthCheckResults"] = [{"alive": t["healthy"], "consecutiveFailures": 0,
                                      "taskId": t["taskId"], "instanceId": t["taskId"],
                                      "firstSuccess": None, "lastFailure": None,
                                      "lastSuccess": None, "lastFailureCause": None}]
    return out


def counts(tasks: list[dict[str, Any]]) -> dict[str, int]:
    live = [t for t in tasks if not lifecycle.is_terminal(t["state"])]
    return {"tasksRunning": sum(t["state"] == "TASK_RUNNING" for t in live),
            "tasksStaged": sum(t["state"] in ("TASK_STAGING", "TASK_STARTING") for t in live),
            "tasksHealthy": sum(t["healthy"] is True for t in live),
            "tasksUnhealthy": sum(t["healthy"] is False for t in live)}


def live_tasks(view: dict[str, Any]) -> list[dict[str, Any]]:
    """The tasks of the instances' current attempts that have not ended."""
    return [t for inst in view["instances"] for t in inst["tasks"]
            if not lifecycle.is_terminal(t["state"])]


def app(view: dict[str, Any], *, version: str | None, version_info: dict[str, Any],
        tasks: list[dict[str, Any]], deployments: list[Deployment],
        failure: dict[str, Any] | None, embed: set[str]) -> dict[str, Any]:
    """``embed``: ``tasks``, ``counts``, ``deployments``, ``lastTaskFailure`` (Marathon's
    ``app.*``/``apps.*`` without the prefix)."""
    out = definition(view["definition"])
    out.update(id=view["id"], version=version, versionInfo=version_info)
    if "counts" in embed:
        out.update(counts(live_tasks(view)))
    if "deployments" in embed:
        out["deployments"] = [{"id": d.id} for d in deployments]
    if "tasks" in embed:
        out["tasks"] = tasks
    if "lastTaskFailure" in embed and failure is not None:
        out["lastTaskFailure"] = failure
    return out


# ---------------------------------------------------------------------- deployments

def steps(dep: Deployment) -> list[dict[str, Any]]:
    if dep.action == START:
        return [{"actions": [{"action": START, "app": dep.app}]},
                {"actions": [{"action": "ScaleApplication", "app": dep.app}]}]
    return [{"actions": [{"action": dep.action, "app": dep.app}]}]


def deployment(dep: Deployment, started: bool = True) -> dict[str, Any]:
    all_steps = steps(dep)
    current = len(all_steps) if started else 1
    return {"id": dep.id, "version": dep.version, "affectedApps": [dep.app],
            "affectedPods": [], "steps": all_steps,
            "currentActions": [{**a, "readinessCheckResults": []}
                               for a in all_steps[current - 1]["actions"]],
            "currentStep": current, "totalSteps": len(all_steps)}


def plan(dep: Deployment, target: dict[str, Any] | None) -> dict[str, Any]:
    """The ``plan`` of deployment events: the root group before and after."""
    def group(app_def: dict[str, Any] | None) -> dict[str, Any]:
        return {"id": "/", "apps": [definition(app_def)] if app_def else [], "groups": [],
                "pods": [], "dependencies": [], "version": dep.version}
    original = None if dep.action == START else dep.original
    return {"id": dep.id, "version": dep.version, "original": group(original),
            "target": group(None if dep.action == STOP else target), "steps": steps(dep)}



# ---------------------------------------------------------------------- queue

def queue_item(app_json: dict[str, Any], pending: list[dict[str, Any]], now: float,
               since: float) -> dict[str, Any]:
    """``pending``: instance views waiting for an offer (``nextLaunchAt`` = backoff end)."""
    wait = max([0.0] + [(i["nextLaunchAt"] or 0) - now for i in pending])
    overdue = wait <= 0 and now - since > 30
    return {"app": app_json, "count": len(pending), "since": timestamp(since),
            "delay": {"timeLeftSeconds": round(wait), "overdue": overdue},
            "processedOffersSummary": {"processedOffersCount": 0, "unusedOffersCount": 0,
                                       "rejectSummaryLastOffers": [],
                                       "rejectSummaryLaunchAttempt": []},
            "lastUnusedOffers": []}
