"""``hypervm logs``: the output a detached container printed (executor.supervisor.logfile)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from executor.supervisor.box import find
from executor.supervisor.logfile import follow, format_record, read_records
from hypervm.config import config_from_env


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "logs", help="print a container's output",
        description="Print what the container's main process wrote (stdout to our stdout, "
                    "stderr to our stderr). The log is rotated: the oldest output goes first.",
        epilog="examples:\n  hypervm logs -f --tail 20 -t web")
    p.add_argument("-f", "--follow", action="store_true",
                   help="keep printing new output until the container exits")
    p.add_argument("--tail", type=int, default=None, metavar="N", help="only the last N lines")
    p.add_argument("-t", "--timestamps", action="store_true", help="prefix each line's time")
    p.add_argument("name", metavar="NAME")
    p.set_defaults(func=logs_command)


def _emit(record: dict[str, Any], timestamps: bool) -> None:
    stream = sys.stderr if record.get("s") == "stderr" else sys.stdout
    stream.write(format_record(record, timestamps))
    stream.flush()


def logs_command(args: argparse.Namespace) -> int:
    box = find(config_from_env(), args.name)
    records, offset = read_records(box.log_file)
    if args.tail is not None:
        records = records[-args.tail:] if args.tail > 0 else []
    for record in records:
        _emit(record, args.timestamps)
    if args.follow:
        def finished() -> bool:
            return not box.path.exists() or box.current().get("status") != "running"

        for record in follow(box.log_file, offset, finished):
            _emit(record, args.timestamps)
    return 0
