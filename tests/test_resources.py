"""Tests for agents.resources against fake /proc and /sys/fs/cgroup trees."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agents.resources import (
    NodeResources,
    cgroup_cpu_limit,
    cgroup_memory_limit,
    detect,
    parse_workers,
    usable_cpus,
    usable_memory,
)

V1_UNLIMITED = "9223372036854771712"
GiB = 1 << 30


class FakeHost:
    """Builds a fake /proc/self/cgroup and cgroup filesystem under tmp_path."""

    def __init__(self, tmp_path: Path, proc_cgroup: str) -> None:
        self.proc = tmp_path / "proc"
        self.cgroup = tmp_path / "cgroup"
        (self.proc / "self").mkdir(parents=True)
        (self.proc / "self" / "cgroup").write_text(proc_cgroup)
        self.cgroup.mkdir()

    def write(self, rel: str, content: str) -> None:
        path = self.cgroup / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)

    def cpus(self, affinity: int = 64) -> int:
        return usable_cpus(str(self.proc), str(self.cgroup), affinity=affinity)

    def memory(self, total: int = 64 * GiB) -> int:
        return usable_memory(str(self.proc), str(self.cgroup), total=total)


# --- cgroup v2 -------------------------------------------------------------


def test_v2_fractional_quota_rounds_up(tmp_path: Path) -> None:
    host = FakeHost(tmp_path, "0::/job\n")
    host.write("job/cpu.max", "150000 100000\n")
    assert host.cpus() == 2


def test_v2_max_means_affinity(tmp_path: Path) -> None:
    host = FakeHost(tmp_path, "0::/job\n")
    host.write("job/cpu.max", "max 100000\n")
    assert host.cpus(affinity=12) == 12
    assert cgroup_cpu_limit(str(host.proc), str(host.cgroup)) is None


def test_v2_small_quota_is_at_least_one(tmp_path: Path) -> None:
    host = FakeHost(tmp_path, "0::/job\n")
    host.write("job/cpu.max", "1000 100000\n")
    assert host.cpus() == 1


def test_v2_namespace_root_path(tmp_path: Path) -> None:
    # With a cgroup namespace the container sees "0::/" and its own limits
    # at the mount root.
    host = FakeHost(tmp_path, "0::/\n")
    host.write("cpu.max", "400000 100000\n")
    assert host.cpus() == 4


def test_v2_host_path_missing_falls_back_to_mount_root(tmp_path: Path) -> None:
    # Without a namespace /proc shows the host path, but only our own cgroup
    # is mounted at /sys/fs/cgroup.
    host = FakeHost(tmp_path, "0::/system.slice/docker-abc.scope\n")
    host.write("cpu.max", "300000 100000\n")
    assert host.cpus() == 3


def test_nested_parent_quota_wins(tmp_path: Path) -> None:
    host = FakeHost(tmp_path, "0::/parent/child\n")
    host.write("parent/cpu.max", "200000 100000\n")
    host.write("parent/child/cpu.max", "800000 100000\n")
    assert host.cpus() == 2


def test_nested_child_quota_wins(tmp_path: Path) -> None:
    host = FakeHost(tmp_path, "0::/parent/child\n")
    host.write("parent/cpu.max", "max 100000\n")
    host.write("parent/child/cpu.max", "300000 100000\n")
    assert host.cpus() == 3


def test_affinity_smaller_than_quota_wins(tmp_path: Path) -> None:
    host = FakeHost(tmp_path, "0::/job\n")
    host.write("job/cpu.max", "800000 100000\n")
    assert host.cpus(affinity=3) == 3


@pytest.mark.parametrize(
    "content",
    [
        "",
        "garbage",
        "150000",
        "abc 100000",
        "150000 0",
        "-5 100000",
        "\x00\x01",
    ],
)
def test_v2_garbage_means_no_limit(tmp_path: Path, content: str) -> None:
    host = FakeHost(tmp_path, "0::/job\n")
    host.write("job/cpu.max", content)
    assert host.cpus(affinity=7) == 7


def test_binary_garbage_and_unreadable_files(tmp_path: Path) -> None:
    host = FakeHost(tmp_path, "0::/job\n")
    (host.cgroup / "job").mkdir()
    (host.cgroup / "job" / "cpu.max").write_bytes(b"\xff\xfe\x00junk")
    (host.cgroup / "job" / "memory.max").mkdir()  # reading a dir raises OSError
    assert host.cpus(affinity=5) == 5
    assert host.memory(total=GiB) == GiB


def test_no_cgroup_files_at_all(tmp_path: Path) -> None:
    # Missing /proc/self/cgroup and an empty cgroup root: no limits, no crash.
    assert usable_cpus(str(tmp_path / "nope"), str(tmp_path / "nada"), affinity=6) == 6
    assert usable_memory(str(tmp_path / "nope"), str(tmp_path / "nada"), total=GiB) == GiB


def test_garbage_proc_cgroup(tmp_path: Path) -> None:
    host = FakeHost(tmp_path, "this is not\na cgroup file\n::\n")
    host.write("cpu.max", "200000 100000")
    assert host.cpus() == 2


# --- cgroup v1 -------------------------------------------------------------

V1_PROC = "4:memory:/job\n3:cpu,cpuacct:/job\n1:name=systemd:/job\n"


def test_v1_half_cpu_quota_is_one(tmp_path: Path) -> None:
    host = FakeHost(tmp_path, V1_PROC)
    host.write("cpu,cpuacct/job/cpu.cfs_quota_us", "50000\n")
    host.write("cpu,cpuacct/job/cpu.cfs_period_us", "100000\n")
    assert host.cpus() == 1


def test_v1_minus_one_means_no_limit(tmp_path: Path) -> None:
    host = FakeHost(tmp_path, V1_PROC)
    host.write("cpu,cpuacct/job/cpu.cfs_quota_us", "-1\n")
    host.write("cpu,cpuacct/job/cpu.cfs_period_us", "100000\n")
    assert host.cpus(affinity=9) == 9


def test_v1_controller_mounted_at_cpu(tmp_path: Path) -> None:
    host = FakeHost(tmp_path, "2:cpu:/a/b\n")
    host.write("cpu/a/cpu.cfs_quota_us", "250000")
    host.write("cpu/a/cpu.cfs_period_us", "100000")
    host.write("cpu/a/b/cpu.cfs_quota_us", "-1")
    host.write("cpu/a/b/cpu.cfs_period_us", "100000")
    assert host.cpus() == 3


def test_v1_missing_period_means_no_limit(tmp_path: Path) -> None:
    host = FakeHost(tmp_path, V1_PROC)
    host.write("cpu,cpuacct/job/cpu.cfs_quota_us", "50000")
    assert host.cpus(affinity=4) == 4


def test_hybrid_layout_checks_both(tmp_path: Path) -> None:
    host = FakeHost(tmp_path, "0::/job\n3:cpu,cpuacct:/job\n4:memory:/job\n")
    host.write("unified/job/cpu.max", "max 100000")
    host.write("cpu,cpuacct/job/cpu.cfs_quota_us", "200000")
    host.write("cpu,cpuacct/job/cpu.cfs_period_us", "100000")
    assert host.cpus() == 2

    host.write("unified/job/cpu.max", "100000 100000")
    assert host.cpus() == 1


# --- memory ----------------------------------------------------------------


def test_memory_v2_limit(tmp_path: Path) -> None:
    host = FakeHost(tmp_path, "0::/job\n")
    host.write("job/memory.max", f"{2 * GiB}\n")
    assert host.memory(total=8 * GiB) == 2 * GiB


def test_memory_v2_max_means_total(tmp_path: Path) -> None:
    host = FakeHost(tmp_path, "0::/job\n")
    host.write("job/memory.max", "max\n")
    assert host.memory(total=8 * GiB) == 8 * GiB
    assert cgroup_memory_limit(str(host.proc), str(host.cgroup)) is None


def test_memory_limit_above_ram_means_ram(tmp_path: Path) -> None:
    host = FakeHost(tmp_path, "0::/job\n")
    host.write("job/memory.max", str(16 * GiB))
    assert host.memory(total=8 * GiB) == 8 * GiB


def test_memory_v1_limit(tmp_path: Path) -> None:
    host = FakeHost(tmp_path, V1_PROC)
    host.write("memory/job/memory.limit_in_bytes", f"{512 * 1024 * 1024}\n")
    assert host.memory(total=8 * GiB) == 512 * 1024 * 1024


def test_memory_v1_huge_value_means_no_limit(tmp_path: Path) -> None:
    host = FakeHost(tmp_path, V1_PROC)
    host.write("memory/job/memory.limit_in_bytes", V1_UNLIMITED)
    host.write("memory/memory.limit_in_bytes", V1_UNLIMITED)
    assert cgroup_memory_limit(str(host.proc), str(host.cgroup)) is None
    assert host.memory(total=8 * GiB) == 8 * GiB


def test_memory_nested_parent_limit(tmp_path: Path) -> None:
    host = FakeHost(tmp_path, "4:memory:/a/b\n")
    host.write("memory/a/memory.limit_in_bytes", str(GiB))
    host.write("memory/a/b/memory.limit_in_bytes", V1_UNLIMITED)
    assert host.memory(total=8 * GiB) == GiB


@pytest.mark.parametrize("content", ["", "lots", "-1", "0", "1.5G"])
def test_memory_garbage_means_no_limit(tmp_path: Path, content: str) -> None:
    host = FakeHost(tmp_path, "0::/job\n4:memory:/job\n")
    host.write("job/memory.max", content)
    host.write("memory/job/memory.limit_in_bytes", content)
    assert host.memory(total=3 * GiB) == 3 * GiB


# --- parse_workers ---------------------------------------------------------


@pytest.mark.parametrize(
    "value,expected",
    [
        ("auto", 6),
        ("AUTO", 6),
        (" auto ", 6),
        ("1", 1),
        ("12", 12),
        (" 3 ", 3),
        (4, 4),
    ],
)
def test_parse_workers_valid(value: str | int, expected: int) -> None:
    assert parse_workers(value, cpus=6) == expected


@pytest.mark.parametrize("value", ["0", "-2", "x", "", "1.5", "2 cores", 0, -1, True, "٣"])
def test_parse_workers_invalid(value: object) -> None:
    with pytest.raises(ValueError, match="--workers must be 'auto' or a positive integer, got"):
        parse_workers(value, cpus=6)  # type: ignore[arg-type]


def test_parse_workers_message_names_value() -> None:
    with pytest.raises(ValueError) as info:
        parse_workers("x", cpus=2)
    assert str(info.value) == "--workers must be 'auto' or a positive integer, got 'x'"


# --- the real machine ------------------------------------------------------


def test_detect_on_this_machine() -> None:
    res = detect()
    assert isinstance(res, NodeResources)
    assert res.cores >= 1 and res.usable_cpus >= 1 and res.memory > 0
    assert res.usable_cpus <= res.cores
    if hasattr(os, "sched_getaffinity"):
        assert res.usable_cpus <= len(os.sched_getaffinity(0))
    assert usable_cpus() == res.usable_cpus
    with pytest.raises(AttributeError):
        res.cores = 99  # type: ignore[misc]
