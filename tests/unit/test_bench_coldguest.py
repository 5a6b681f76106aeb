"""bench.coldguest's reading of init's debug stamps line (init/src/stamp.h)."""

from __future__ import annotations

from bench.coldguest import parse_stamps

LINE = ("hypervm-init: stamps t0=1.053361 network_recv=0.00 start_recv=3.50 start_ok=71.33 "
        "exit_sent=184.37 spare=186.02")


def test_the_last_stamps_line_gives_each_step_in_ms() -> None:
    console = f"[    1.0] boot\n{LINE.replace('184.37', '99.00')}\nhypervm-init: x\n{LINE}\n"
    assert parse_stamps(console) == {"network_recv": 0.0, "start_recv": 3.5, "start_ok": 71.33,
                                     "exit_sent": 184.37, "spare": 186.02}


def test_a_console_without_stamps_gives_none() -> None:
    assert parse_stamps("hypervm-init: READY sent\nhypervm-init: stamps\n") == {}
