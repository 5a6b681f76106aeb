"""Resource arithmetic of the master double: amounts of cpus, mem and port sets."""

from __future__ import annotations

from typing import Any

from tests.mesos import protos


def amounts(resources: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"cpus": 0.0, "mem": 0.0, "ports": set()}
    for r in resources:
        if r["name"] in ("cpus", "mem"):
            out[r["name"]] += r["scalar"]["value"]
        elif r["name"] == "ports":
            for rng in r["ranges"]["range"]:
                out["ports"] |= set(range(int(rng["begin"]), int(rng["end"]) + 1))
        else:
            out[r["name"]] = out.get(r["name"], 0.0) + r.get("scalar", {}).get("value", 0.0)
    return out


def subtract(left: dict[str, Any], used: dict[str, Any], check: bool = True) -> None:
    for name, amount in used.items():
        if name == "ports":
            if check and not amount <= left["ports"]:
                raise protos.ProtoViolation(f"ports {sorted(amount - left['ports'])} are not "
                                            "in the offer")
            left["ports"] = left["ports"] - amount
            continue
        if check and amount > left.get(name, 0.0) + 1e-6:
            raise protos.ProtoViolation(f"{name}: {amount:g} used > {left.get(name, 0):g} "
                                        "offered")
        left[name] = left.get(name, 0.0) - amount


def ranges(ports: set[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for port in sorted(ports):
        if out and out[-1][1] == port - 1:
            out[-1] = (out[-1][0], port)
        else:
            out.append((port, port))
    return out


def offer_resources(free: dict[str, Any], alloc: dict[str, str]) -> list[dict[str, Any]]:
    """An offer's resources, in a real agent's order: ports, cpus, mem, disk."""
    resources: list[dict[str, Any]] = []
    if free["ports"]:
        resources.append({"name": "ports", "type": "RANGES", "allocation_info": alloc,
                          "ranges": {"range": [{"begin": b, "end": e}
                                               for b, e in ranges(free["ports"])]}})
    for name in ("cpus", "mem", "disk"):
        if free.get(name, 0) >= (0.01 if name == "cpus" else 1):
            resources.append({"name": name, "type": "SCALAR", "allocation_info": alloc,
                              "scalar": {"value": round(free[name], 3)}})
    return resources
