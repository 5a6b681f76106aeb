"""bench.translated's count of a QEMU ``-d in_asm`` log by kernel function and subsystem."""

from bench.translated import USER, count, subsystems

LOG = b"""----------------
IN:
0xffffffff81000010:  48 89 e5                 movq     %rsp, %rbp
0xffffffff81000013:  c3                       retq

----------------
IN:
0x00401000:  31 c0                    xorl     %eax, %eax
0xffffffff81000100:  90                       nop
0xffffffff81000200:  90                       nop
0xffffffff80000000:  90                       nop
"""
#: (addresses, names) as kernel_symbols reads them from ``nm -n``
SYMBOLS = ([0xFFFFFFFF81000000, 0xFFFFFFFF81000100, 0xFFFFFFFF81000200],
           ["ovl_fill_super", "cgroup_mkdir", "do_something"])


def test_instructions_are_counted_by_the_function_they_fall_in() -> None:
    by_fn = count(LOG, SYMBOLS)
    assert by_fn == {"ovl_fill_super": 2, USER: 1, "cgroup_mkdir": 1, "do_something": 1,
                     "?": 1}


def test_subsystems_sum_the_functions_and_keep_user_code_apart() -> None:
    assert subsystems(count(LOG, SYMBOLS)) == {"overlay": 2, "user": 1, "cgroup/memcg": 1,
                                               "other": 2}
