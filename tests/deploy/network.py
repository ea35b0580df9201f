"""The deployment's private network: a bridge on this host and, per node, a network
namespace joined to it by a veth pair. The host is .1 of a /24 in 10.233.0.0/16 that no
route of this host covers; nodes get .11 and up. Every name starts with the run's tag
(leftovers.py finds them by it), and cutting a node's link is taking its host end down."""

from __future__ import annotations

import ipaddress
import json
import random
import subprocess
from dataclasses import dataclass


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True, timeout=30)


def _taken() -> list[ipaddress.IPv4Network]:
    routes = json.loads(ip("-j", "-4", "route", "show", "table", "all").stdout)
    return [ipaddress.ip_network(r["dst"], strict=False) for r in routes if r.get("dst", "default")[0].isdigit()]


def free_subnet() -> ipaddress.IPv4Network:
    """A /24 of 10.233.0.0/16 that overlaps no route of this host (other runs included)."""
    taken = _taken()
    for third in random.sample(range(1, 255), 254):
        net = ipaddress.ip_network(f"10.233.{third}.0/24")
        if not any(net.overlaps(t) for t in taken):
            return net
    raise RuntimeError("no free /24 in 10.233.0.0/16")


@dataclass
class Link:
    """A node's place on the network: its namespace, address and the host end of its veth."""

    netns: str
    address: str
    host_end: str

    @property
    def netns_path(self) -> str:
        return f"/run/netns/{self.netns}"


class Network:
    def __init__(self, tag: str):
        self.tag = tag
        self.subnet = free_subnet()
        self.host = str(self.subnet.network_address + 1)
        self.bridge = f"{tag}br"
        self.links: dict[str, Link] = {}
        ip("link", "add", self.bridge, "type", "bridge")
        ip("addr", "add", f"{self.host}/24", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")

    def add(self, name: str) -> Link:
        """A namespace for node ``name`` with eth0 at the next address, up and on the bridge."""
        index = len(self.links)
        link = Link(f"{self.tag}-{name}", str(self.subnet.network_address + 11 + index), f"{self.tag}v{index}")
        inner = f"{self.tag}i{index}"
        ip("netns", "add", link.netns)
        self.links[name] = link
        ip("link", "add", link.host_end, "type", "veth", "peer", "name", inner)
        ip("link", "set", inner, "netns", link.netns)
        ip("-n", link.netns, "link", "set", inner, "name", "eth0")
        ip("-n", link.netns, "addr", "add", f"{link.address}/24", "dev", "eth0")
        ip("-n", link.netns, "link", "set", "eth0", "up")
        ip("-n", link.netns, "link", "set", "lo", "up")
        ip("link", "set", link.host_end, "master", self.bridge)
        ip("link", "set", link.host_end, "up")
        return link

    def cut(self, name: str) -> None:
        """The node can reach nothing and nothing reaches it (its processes live on)."""
        ip("link", "set", self.links[name].host_end, "down")

    def heal(self, name: str) -> None:
        ip("link", "set", self.links[name].host_end, "up")

    def remove(self) -> None:
        """Idempotent; a namespace's end of a veth goes with the namespace."""
        for link in self.links.values():
            ip("link", "del", link.host_end, check=False)
            ip("netns", "del", link.netns, check=False)
        ip("link", "del", self.bridge, check=False)
