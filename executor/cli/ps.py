"""``hypervm ps`` and ``hypervm inspect``: the containers of detached (and -t) runs."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from executor.supervisor.box import Box, all_boxes, find
from hypervm.config import config_from_env

COLUMNS = ("NAME", "ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS")


def ago(seconds: float) -> str:
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= 2 * size:
            return f"{int(seconds // size)} {unit}"
    return f"{int(seconds)} seconds"


def status_text(state: dict[str, Any], now: float) -> str:
    if state.get("status") == "running":
        return f"Up {ago(now - state.get('started', now))}"
    if state.get("status") == "exited":
        return f"Exited ({state.get('exit_code')}) {ago(now - state.get('finished', now))} ago"
    return str(state.get("status", "unknown")).capitalize()


def summary(box: Box) -> dict[str, Any]:
    state = box.current()
    return {"name": box.name, "id": state.get("id"), "image": state.get("image") or "(rootfs)",
            "command": state.get("command", []), "created": state.get("created"),
            "status": state.get("status"), "exit_code": state.get("exit_code"),
            "ports": state.get("ports", [])}


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "ps", help="list containers (detached runs)",
        description="List the containers of detached (-d) and terminal (-t) runs: running "
                    "ones, or all with -a.",
        epilog="examples:\n  hypervm ps -a --format json")
    p.add_argument("-a", "--all", action="store_true", help="also exited containers")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(func=ps_command)
    p = subparsers.add_parser(
        "inspect", help="a container's state as JSON",
        description="Print the state of each container as a JSON list: VM id, image, "
                    "command, status, exit code, supervisor pid, events, paths.",
        epilog="examples:\n  hypervm inspect web | jq '.[0].status'")
    p.add_argument("names", nargs="+", metavar="NAME")
    p.set_defaults(func=inspect_command)


def ps_command(args: argparse.Namespace) -> int:
    rows = [summary(box) for box in all_boxes(config_from_env())]
    rows = [r for r in rows if args.all or r["status"] == "running"]
    if args.format == "json":
        print(json.dumps(rows, indent=1))
        return 0
    now = time.time()
    table = [COLUMNS] + [
        (r["name"], r["id"] or "-", r["image"], " ".join(r["command"])[:30],
         ago(now - (r["created"] or now)) + " ago", status_text(r, now), ", ".join(r["ports"]))
        for r in rows]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(COLUMNS))]
    for row in table:
        print("  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    return 0


def inspect_command(args: argparse.Namespace) -> int:
    cfg = config_from_env()
    out = []
    for name in args.names:
        box = find(cfg, name)
        state = box.current()
        state.update(supervisor_alive=box.supervisor_alive(state), box=str(box.path),
                     log_path=str(box.log_file), socket=str(box.socket))
        out.append(state)
    print(json.dumps(out, indent=1))
    return 0
