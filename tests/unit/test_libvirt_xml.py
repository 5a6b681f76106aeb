"""The domain XML builder: golden files, schema validation, libvirt's test driver, and back."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from executor.libvirt.designer import RunFiles, clone_domain, cold_domain, pool_domain
from executor.libvirt.domain import CHANNEL_NAME, CpuTune, DiskSpec, DomainSpec, MemTune, ShareSpec
from executor.libvirt.domain_xml import (
    METADATA_NS,
    QEMU_NS,
    domain_xml,
    hotplug_disk_xml,
    metadata_element_xml,
    parse_dac_label,
    parse_domain_facts,
    virtio_disk_name,
)
from hypervm.config import config_from_env
from hypervm.errors import InvalidSpec
from hypervm.netspec import NetworkSpec
from hypervm.podspec import Resources
from vmimage.boot import BootFiles
from vmimage.kernel import Kernel
from vmimage.qemu import DISTRO

GOLDEN = Path(__file__).parent / "golden"
#: UPDATE_GOLDEN=1 pytest tests/unit/test_libvirt_xml.py rewrites the golden files
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"
RUN = Path("/run/hypervm/vms/hypervm-web-0badcafe")


def _base(**overrides: object) -> DomainSpec:
    values: dict[str, object] = dict(
        name="hypervm-web-0badcafe",
        accel="tcg",
        vcpus=1,
        memory_mib=256,
        kernel=Path("/var/lib/hypervm/kernel/0123456789abcdef/vmlinux"),
        initrd=Path("/var/lib/hypervm/initrd/fedcba9876543210/initrd.img"),
        cmdline="console=ttyS0 quiet panic=-1",
        channel_socket=RUN / "channel.sock",
        console_log=RUN / "console.log",
        metadata={"owner-pid": "4242", "owner-start": "123456", "pod": "web"},
    )
    values.update(overrides)
    return DomainSpec(**values)  # type: ignore[arg-type]


POOL_RUN = Path("/run/hypervm/vms/hypervm-pool-0badcafe")
#: the boot files of the golden domains made by the designer (pool, cold)
GOLDEN_BOOT = BootFiles(kernel=Kernel(Path("/var/lib/hypervm/kernel/0123456789abcdef/vmlinux"),
                                      "6.1", "hyperkernel"),
                        initrd=Path("/var/lib/hypervm/initrd/fedcba9876543210/initrd.img"),
                        qemu=DISTRO, accel="tcg", cmdline="console=ttyS0 quiet panic=-1")
SPECS = {
    "tcg-minimal": _base(bios=None, metadata={}),
    "tcg-pool": dataclasses.replace(pool_domain(
        "hypervm-pool-0badcafe",
        GOLDEN_BOOT,
        config_from_env({}), POOL_RUN, 1, 128,
        {"owner-pid": "4242", "owner-start": "123456", "pool": "pool", "pool-state": "idle"}),
        qemu_args=()),
    # a cold VM as executor.vm builds it: its layer disks pinned to their slots (issue 17/18)
    "tcg-cold": dataclasses.replace(cold_domain(
        "hypervm-web-0badcafe",
        GOLDEN_BOOT,
        config_from_env({}), RunFiles.under(RUN), Resources(cpus=1, memory_mib=128),
        NetworkSpec(), {"owner-pid": "4242", "owner-start": "123456", "pod": "web"},
        disks=(DiskSpec(Path("/var/lib/hypervm/images/layers/sha256-aa.erofs"), "l0"),
               DiskSpec(Path("/var/lib/hypervm/images/layers/sha256-bb.erofs"), "l1")),
        shares=(ShareSpec(Path("/var/lib/mesos/sandbox/web"), "s0"),)), qemu_args=()),
    "tcg-pod": _base(
        tb_cache_mib=8,
        emulator=Path("/var/lib/hypervm/qemu/0123456789abcdef/bin/qemu-system-x86_64"),
        disks=(DiskSpec(Path("/var/lib/hypervm/images/layers/sha256-aa.erofs"), "l0"),),
        shares=(ShareSpec(Path("/var/lib/mesos/sandbox/web"), "s0", readonly=False),),
    ),
    "kvm-full": _base(
        accel="kvm",
        vcpus=4,
        memory_mib=2048,
        disks=(
            DiskSpec(Path("/var/lib/hypervm/images/layers/sha256-aa.erofs"), "l0"),
            DiskSpec(Path("/var/lib/hypervm/images/layers/sha256-bb.erofs"), "l1"),
            DiskSpec(RUN / "scratch.qcow2", "scratch", readonly=False, format="qcow2"),
        ),
        shares=(
            ShareSpec(Path("/srv/config"), "s0", readonly=True),
            ShareSpec(Path("/srv/data"), "s1"),
        ),
        metadata={
            "owner-pid": "4242",
            "owner-start": "123456",
            "pod": "web",
            "label.tenant": "a&b <c> \"d\" 'e'",
        },
        cputune=CpuTune(shares=2048, period_us=100000, quota_us=400000),
        tb_cache_mib=64,  # TCG only: no <tcg> element for KVM
        memtune=MemTune(hard_limit_mib=2304),
        qemu_args=(
            "-netdev",
            "tap,id=net0,ifname=hvtap0,script=no,downscript=no",
            "-device",
            "virtio-net-pci,netdev=net0",
        ),
        qemu_env={"G_SLICE": "always-malloc", "MALLOC_ARENA_MAX": "2"},
    ),
}


@pytest.mark.parametrize("name", sorted(SPECS))
def test_golden(name: str) -> None:
    xml = domain_xml(SPECS[name])
    path = GOLDEN / f"{name}.xml"
    if UPDATE:
        path.write_text(xml)
    assert xml == path.read_text(), f"{path} differs (UPDATE_GOLDEN=1 to rewrite it)"


def test_every_spec_has_a_golden_file() -> None:
    assert {p.stem for p in GOLDEN.glob("*.xml")} == set(SPECS)


@pytest.mark.skipif(
    shutil.which("virt-xml-validate") is None,
    reason="virt-xml-validate not installed (apt-get install libvirt-clients)",
)
@pytest.mark.parametrize("name", sorted(SPECS))
def test_golden_validates_against_libvirt_schema(name: str) -> None:
    result = subprocess.run(
        ["virt-xml-validate", str(GOLDEN / f"{name}.xml"), "domain"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr + result.stdout


def test_schema_validation_can_fail(tmp_path: Path) -> None:
    if shutil.which("virt-xml-validate") is None:
        pytest.skip("virt-xml-validate not installed")
    bad = tmp_path / "bad.xml"
    bad.write_text(domain_xml(SPECS["tcg-pod"]).replace("<on_crash>destroy", "<on_crash>boom"))
    result = subprocess.run(
        ["virt-xml-validate", str(bad), "domain"], capture_output=True, check=False
    )
    assert result.returncode != 0


@pytest.mark.parametrize("name", sorted(SPECS))
def test_golden_defines_on_libvirt_test_driver(name: str) -> None:
    libvirt = pytest.importorskip("libvirt")
    libvirt.registerErrorHandler(lambda *_: None, None)
    conn = libvirt.open("test:///default")
    try:
        dom = conn.defineXML((GOLDEN / f"{name}.xml").read_text())
        try:
            facts = parse_domain_facts(dom.XMLDesc(0))
        finally:
            dom.undefine()
    finally:
        conn.close()
    spec = SPECS[name]
    assert facts.ours
    assert facts.name == spec.name
    assert dict(facts.metadata) == dict(spec.metadata)
    assert facts.disk_paths == tuple(d.path for d in spec.disks)
    assert facts.share_paths == tuple(s.source for s in spec.shares)


def _devices(xml: str) -> ET.Element:
    return _find(ET.fromstring(xml), "devices")


def _find(el: ET.Element, path: str) -> ET.Element:
    found = el.find(path)
    assert found is not None, f"no {path}"
    return found


def test_no_needless_devices() -> None:
    root = ET.fromstring(domain_xml(SPECS["kvm-full"]))
    devices = _devices(domain_xml(SPECS["kvm-full"]))
    for tag in ("graphics", "video", "sound", "interface", "input", "hostdev"):
        assert devices.find(tag) is None, tag
    # the one extra: a virtio RNG, so the guest's getrandom() does not wait seconds under TCG
    assert _find(devices, "rng").get("model") == "virtio"
    assert devices.findtext("rng/backend") == "/dev/urandom"
    assert _find(devices, "controller[@type='usb']").get("model") == "none"
    balloon = _find(devices, "memballoon")
    assert (balloon.get("model"), balloon.get("freePageReporting")) == ("virtio", "on")
    for event in ("on_poweroff", "on_reboot", "on_crash"):
        assert root.findtext(event) == "destroy"
    # HYPERVM_FREE_PAGE_REPORTING=off: no balloon at all (libvirt would add one otherwise)
    off = _devices(domain_xml(dataclasses.replace(SPECS["kvm-full"], free_page_reporting=False)))
    assert _find(off, "memballoon").attrib == {"model": "none"}


def test_guest_ram_is_never_merged_unless_ksm_is_asked_for() -> None:
    """Default: a shared memfd (KSM never merges shared pages) and <nosharepages/> (QEMU's
    mem-merge=off), so no tenant's page is ever merged with another's. HYPERVM_KSM=on:
    QEMU's anonymous RAM (a private memfd would allocate each written page twice) and no
    <nosharepages/>, so QEMU marks it mergeable for the host's KSM. The pool's VMs follow
    the host configuration like cold ones."""
    off = ET.fromstring(domain_xml(SPECS["tcg-pod"]))
    assert off.find("memoryBacking/nosharepages") is not None
    assert _find(off, "memoryBacking/source").get("type") == "memfd"
    assert _find(off, "memoryBacking/access").get("mode") == "shared"
    on = ET.fromstring(domain_xml(dataclasses.replace(SPECS["tcg-pod"], memory_merge=True)))
    assert on.find("memoryBacking") is None
    boot = BootFiles(kernel=Kernel(Path("/k/vmlinux"), "6.1", "hyperkernel"),
                     initrd=Path("/k/initrd.img"), qemu=DISTRO, accel="tcg", cmdline="quiet")
    for env, merged in (({}, False), ({"HYPERVM_KSM": "on"}, True)):
        spec = pool_domain("hypervm-pool-0badcafe", boot, config_from_env(env), POOL_RUN, 1,
                           128, {})
        assert spec.memory_merge is merged
        root = ET.fromstring(domain_xml(spec))
        assert (root.find("memoryBacking/nosharepages") is None) is merged


def test_accel_selects_domain_type_and_cpu() -> None:
    kvm = ET.fromstring(domain_xml(SPECS["kvm-full"]))
    tcg = ET.fromstring(domain_xml(SPECS["tcg-pod"]))
    assert (kvm.get("type"), _find(kvm, "cpu").get("mode")) == ("kvm", "host-passthrough")
    assert (tcg.get("type"), _find(tcg, "cpu").get("mode")) == ("qemu", "maximum")


def test_channel_and_console() -> None:
    devices = _devices(domain_xml(SPECS["tcg-pod"]))
    channel = _find(devices, "channel[@type='unix']")
    assert _find(channel, "source").attrib == {"mode": "bind", "path": str(RUN / "channel.sock")}
    assert _find(channel, "target").attrib == {"type": "virtio", "name": CHANNEL_NAME}
    assert _find(devices, "serial/source").get("path") == str(RUN / "console.log")


def test_shared_disks_are_not_relabelled_and_carry_serials() -> None:
    devices = _devices(domain_xml(SPECS["kvm-full"]))
    disks = devices.findall("disk")
    assert [d.findtext("serial") for d in disks] == ["l0", "l1", "scratch"]
    assert [_find(d, "target").get("dev") for d in disks] == ["vda", "vdb", "vdc"]
    assert [d.find("readonly") is not None for d in disks] == [True, True, False]
    labels = [d.find("source/seclabel") for d in disks]
    assert [lab.attrib if lab is not None else None for lab in labels] == [
        {"model": "dac", "relabel": "no"},
        {"model": "dac", "relabel": "no"},
        None,
    ]
    assert _find(disks[2], "driver").get("type") == "qcow2"


def test_metadata_is_escaped_and_round_trips() -> None:
    xml = domain_xml(SPECS["kvm-full"])
    assert f'xmlns:hypervm="{METADATA_NS}"' in xml
    assert parse_domain_facts(xml).metadata["label.tenant"] == "a&b <c> \"d\" 'e'"


def test_builder_validates_first() -> None:
    with pytest.raises(InvalidSpec):
        domain_xml(_base(name="not-ours"))


def test_foreign_domains_are_not_ours() -> None:
    ours = domain_xml(SPECS["tcg-pod"])
    assert parse_domain_facts(ours).ours
    no_meta = ET.fromstring(ours)
    no_meta.remove(_find(no_meta, "metadata"))
    assert not parse_domain_facts(ET.tostring(no_meta, encoding="unicode")).ours
    assert not parse_domain_facts(ours.replace("hypervm-web-0badcafe", "web-0badcafe")).ours


@pytest.mark.parametrize(
    "index, name",
    [(0, "vda"), (25, "vdz"), (26, "vdaa"), (27, "vdab"), (701, "vdzz"), (702, "vdaaa")],
)
def test_virtio_disk_name(index: int, name: str) -> None:
    assert virtio_disk_name(index) == name


CAPS = """<capabilities><host>
  <secmodel><model>none</model><doi>0</doi></secmodel>
  <secmodel><model>dac</model><doi>0</doi>
    <baselabel type='kvm'>+64055:+108</baselabel>
    <baselabel type='qemu'>+64055:+64055</baselabel>
  </secmodel></host></capabilities>"""


def test_parse_dac_label() -> None:
    assert parse_dac_label(CAPS) == (64055, 64055)
    assert parse_dac_label(CAPS, "kvm") == (64055, 108)
    assert parse_dac_label("<capabilities><host/></capabilities>") is None
    assert parse_dac_label(CAPS.replace("+64055:+64055", "qemu:qemu")) is None


@settings(max_examples=200, deadline=None)
@given(
    meta=st.dictionaries(st.text(min_size=1, max_size=20), st.text(max_size=40), max_size=5),
    cmdline=st.text(max_size=60),
    tag=st.text(max_size=40),
)
@example(meta={"k": "a\rb"}, cmdline="", tag="s0")
@example(meta={"k\tx": "a\tb\n"}, cmdline="a\tb", tag="s0")
def test_any_input_is_rejected_or_round_trips(meta: dict[str, str], cmdline: str, tag: str) -> None:
    """Whatever a caller passes, the builder either raises InvalidSpec or emits well-formed XML
    that reads back to the same values."""
    spec = _base(metadata=meta, cmdline=cmdline, shares=(ShareSpec(Path("/srv/x"), tag),))
    try:
        xml = domain_xml(spec)
    except InvalidSpec:
        return
    root = ET.fromstring(xml)
    assert root.findtext("os/cmdline", default="") == cmdline
    assert _find(root, "devices/filesystem/target").get("dir") == tag
    assert dict(parse_domain_facts(xml).metadata) == meta


def test_pool_vm_has_a_scsi_controller_and_one_remapped_share() -> None:
    devices = _devices(domain_xml(SPECS["tcg-pool"]))
    assert _find(devices, "controller[@type='scsi']").attrib == {
        "type": "scsi", "index": "0", "model": "virtio-scsi"}
    assert devices.findall("disk") == []
    shares = devices.findall("filesystem")
    assert len(shares) == 1
    assert shares[0].get("multidevs") == "remap"
    assert _find(shares[0], "source").get("dir") == str(POOL_RUN / "share")
    assert _find(shares[0], "target").get("dir") == "pool"
    # a cold VM has neither
    cold = _devices(domain_xml(SPECS["tcg-pod"]))
    assert cold.find("controller[@type='scsi']") is None
    assert _find(cold, "filesystem").get("multidevs") is None


def test_hotplug_disk_is_a_readonly_lun_with_its_serial() -> None:
    disk = ET.fromstring(hotplug_disk_xml(
        DiskSpec(Path("/var/lib/hypervm/images/layers/sha256-aa.erofs"), "l3"), 27))
    assert _find(disk, "target").attrib == {"dev": "sdab", "bus": "scsi"}
    assert disk.findtext("serial") == "l3"
    assert disk.find("readonly") is not None
    assert _find(disk, "source/seclabel").attrib == {"model": "dac", "relabel": "no"}
    assert _find(disk, "address").attrib == {"type": "drive", "controller": "0", "bus": "0",
                                             "target": "0", "unit": "27"}


def test_hotplug_disk_rejects_bad_input() -> None:
    with pytest.raises(InvalidSpec, match="unit"):
        hotplug_disk_xml(DiskSpec(Path("/x.erofs"), "l0"), 16384)
    with pytest.raises(InvalidSpec, match="serial"):
        hotplug_disk_xml(DiskSpec(Path("/x.erofs"), "bad serial"), 0)
    with pytest.raises(InvalidSpec, match="path"):
        hotplug_disk_xml(DiskSpec(Path("x.erofs"), "l0"), 0)


def test_share_multidevs_is_checked() -> None:
    with pytest.raises(InvalidSpec, match=r"shares\[0\]\.multidevs"):
        domain_xml(_base(shares=(ShareSpec(Path("/srv"), "s0", multidevs="sometimes"),)))


@pytest.mark.skipif(shutil.which("virt-xml-validate") is None,
                    reason="virt-xml-validate not installed")
def test_pool_vm_with_hotplugged_disks_validates(tmp_path: Path) -> None:
    """The hot-added <disk> is valid where libvirt puts it: in the running domain's devices."""
    root = ET.fromstring(domain_xml(SPECS["tcg-pool"]))
    devices = _find(root, "devices")
    for unit in range(3):
        devices.append(ET.fromstring(hotplug_disk_xml(
            DiskSpec(Path(f"/var/lib/hypervm/images/layers/{unit}.erofs"), f"l{unit}"), unit)))
    path = tmp_path / "pool-with-disks.xml"
    path.write_text(ET.tostring(root, encoding="unicode"))
    result = subprocess.run(["virt-xml-validate", str(path), "domain"], capture_output=True,
                            text=True, check=False)
    assert result.returncode == 0, result.stderr + result.stdout


@pytest.mark.skipif(shutil.which("virt-xml-validate") is None,
                    reason="virt-xml-validate not installed")
def test_hotpluggable_vcpus_validate(tmp_path: Path) -> None:
    """A snapshot's template: 1 vCPU present of 4 (DomainSpec.max_vcpus)."""
    xml = domain_xml(dataclasses.replace(SPECS["tcg-pool"], vcpus=1, max_vcpus=4))
    assert '<vcpu placement="static" current="1">4</vcpu>' in xml
    path = tmp_path / "template.xml"
    path.write_text(xml)
    result = subprocess.run(["virt-xml-validate", str(path), "domain"], capture_output=True,
                            text=True, check=False)
    assert result.returncode == 0, result.stderr + result.stdout


def test_metadata_element_round_trips_through_the_parser() -> None:
    entries = {"owner-pid": "7", "pod": "a&b <c>", "pool": "p"}
    xml = (f'<domain><name>hypervm-x</name><metadata>{metadata_element_xml(entries)}'
           '</metadata></domain>')
    facts = parse_domain_facts(xml)
    assert facts.ours
    assert dict(facts.metadata) == entries


def test_idle_memory_knobs() -> None:
    """Guest RAM is a memfd (no THP): the idle VM's RSS (bench); TCG's translation cache is
    capped when asked (QEMU's default otherwise); KVM has no translation cache to cap."""
    assert ET.fromstring(domain_xml(SPECS["tcg-pool"])).find("features/tcg") is None
    with pytest.raises(InvalidSpec, match="tb_cache_mib"):
        domain_xml(_base(tb_cache_mib=0))
    tcg = ET.fromstring(domain_xml(SPECS["tcg-pod"]))
    assert tcg.findtext("features/tcg/tb-cache") == "8"
    assert _find(tcg, "features/tcg/tb-cache").get("unit") == "MiB"
    assert _find(tcg, "memoryBacking/source").get("type") == "memfd"
    assert _find(tcg, "memoryBacking/access").get("mode") == "shared"
    kvm = ET.fromstring(domain_xml(SPECS["kvm-full"]))
    assert kvm.find("features/tcg") is None
    assert _find(kvm, "memoryBacking/source").get("type") == "memfd"


def test_every_domain_runs_qemu_with_glib_slices_from_malloc() -> None:
    """GLib 2.74's slice allocator kept the freed translated-block tree of a TCG boot in the
    vCPU thread's arena (~2.8 MiB of an idle VM's private memory): every domain the designer
    makes, cold, pool or clone, gives QEMU G_SLICE=always-malloc (a <qemu:env>), beside the
    NIC's <qemu:arg>s."""
    boot = BootFiles(kernel=Kernel(Path("/k/vmlinux"), "6.1", "hyperkernel"),
                     initrd=Path("/k/initrd.img"), qemu=DISTRO, accel="tcg", cmdline="quiet")
    cfg = config_from_env({})
    specs = [
        cold_domain("hypervm-web-0badcafe", boot, cfg, RunFiles.under(RUN),
                    Resources(cpus=1, memory_mib=128), NetworkSpec(), {}),
        pool_domain("hypervm-pool-0badcafe", boot, cfg, POOL_RUN, 1, 128, {}),
        clone_domain("hypervm-web-0badcafe", "hypervm-pool-0badcafe", boot, cfg, RUN, 1, 128,
                     {}),
    ]
    for spec in specs:
        cmdline = _find(ET.fromstring(domain_xml(spec)), f"{{{QEMU_NS}}}commandline")
        env = {e.get("name"): e.get("value") for e in cmdline.findall(f"{{{QEMU_NS}}}env")}
        assert env == {"G_SLICE": "always-malloc"}, spec.name
        assert cmdline.findall(f"{{{QEMU_NS}}}arg"), "the NIC's arguments stay"
        # libvirt wants every <qemu:arg> before the first <qemu:env>
        tags = [child.tag.rsplit("}", 1)[1] for child in cmdline]
        assert tags == sorted(tags), tags


def test_emulator_is_hyperqemu_when_given_else_libvirts_default() -> None:
    pod = _devices(domain_xml(SPECS["tcg-pod"]))
    assert pod[0].tag == "emulator"  # libvirt's schema wants it first
    assert pod[0].text == "/var/lib/hypervm/qemu/0123456789abcdef/bin/qemu-system-x86_64"
    assert _devices(domain_xml(SPECS["kvm-full"])).find("emulator") is None
    with pytest.raises(InvalidSpec, match="emulator"):
        domain_xml(_base(emulator=Path("qemu-system-x86_64")))


def test_shares_let_a_non_root_qemu_create_files() -> None:
    """passthrough makes every guest create fail (QEMU, not root, cannot chown); mapped does
    not, and unlike squash it keeps guest-made symlinks, devices and set-id bits out of the
    host (issue 15): every share of every domain, the pool's included, is mapped."""
    for name in ("tcg-pod", "kvm-full", "tcg-pool"):
        shares = _devices(domain_xml(SPECS[name])).findall("filesystem")
        assert shares and {fs.get("accessmode") for fs in shares} == {"mapped"}, name
