"""Network namespaces that a test creates and removes itself: a LAN (a bridge in a namespace of its own),
hosts on it (one namespace each, a veth pair into the bridge), and hosts behind a masquerading NAT router.
Nothing is added to the root namespace: every link lives in a namespace named after this process, and
deleting the namespaces removes them all."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess


def unavailable() -> str:
    """Why these tests cannot run here ("" if they can)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool, package in (("ip", "iproute2"), ("iptables", "iptables")):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (apt-get install {package})"
    probe = f"pnprobe{os.getpid()}"
    r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if r.returncode != 0:
        return f"cannot create a network namespace: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return ""


def _ip(*args: str) -> None:
    r = subprocess.run(["ip", *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {r.stderr.strip()}")


class Lan:
    """A 10.77.0.0/24 LAN; `host(name, last_octet)` puts a namespace on it, `cut`/`heal` take its link down
    and up at the bridge, `nat_host` puts a namespace behind a NAT router that is itself on the LAN."""

    SUBNET = "10.77.0"

    def __init__(self) -> None:
        self.prefix = f"pn{os.getpid() % 100000}"
        self.namespaces: list[str] = []
        self.bridge_ns = self._ns("lan")
        _ip("-n", self.bridge_ns, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.bridge_ns, "link", "set", "br0", "up")

    def _ns(self, name: str) -> str:
        ns = f"{self.prefix}-{name}"
        _ip("netns", "add", ns)
        self.namespaces.append(ns)
        _ip("-n", ns, "link", "set", "lo", "up")
        return ns

    def ns(self, name: str) -> str:
        return f"{self.prefix}-{name}"

    def argv(self, name: str) -> list[str]:
        """Prefix that runs a command inside host `name`."""
        return ["ip", "netns", "exec", self.ns(name)]

    def _plug(self, ns: str, port: str, ip: str) -> None:
        """A veth pair: `port` on the bridge, eth0 in `ns` with `ip`/24."""
        _ip("-n", self.bridge_ns, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns)
        _ip("-n", self.bridge_ns, "link", "set", port, "master", "br0")
        _ip("-n", self.bridge_ns, "link", "set", port, "up")
        _ip("-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0")
        _ip("-n", ns, "link", "set", "eth0", "up")

    def host(self, name: str, octet: int) -> str:
        """A host on the LAN; returns its address."""
        ip = f"{self.SUBNET}.{octet}"
        self._plug(self._ns(name), f"v{name}", ip)
        return ip

    def nat_host(self, name: str, router_octet: int) -> tuple[str, str]:
        """A host at 192.168.77.2 behind a router at LAN address .router_octet that masquerades it (iptables).
        Returns (the host's private address, the router's LAN address it appears from)."""
        if shutil.which("iptables") is None:
            raise RuntimeError("iptables is not installed")
        router = self._ns(f"{name}gw")
        public = f"{self.SUBNET}.{router_octet}"
        self._plug(router, f"v{name}gw", public)
        inside = self._ns(name)
        _ip("-n", router, "link", "add", "eth1", "type", "veth", "peer", "name", "eth0", "netns", inside)
        _ip("-n", router, "addr", "add", "192.168.77.1/24", "dev", "eth1")
        _ip("-n", router, "link", "set", "eth1", "up")
        _ip("-n", inside, "addr", "add", "192.168.77.2/24", "dev", "eth0")
        _ip("-n", inside, "link", "set", "eth0", "up")
        _ip("-n", inside, "route", "add", "default", "via", "192.168.77.1")
        for cmd in (["sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"],
                    ["iptables", "-t", "nat", "-A", "POSTROUTING", "-o", "eth0", "-j", "MASQUERADE"]):
            subprocess.run(["ip", "netns", "exec", router, *cmd], check=True, capture_output=True)
        return "192.168.77.2", public

    def cut(self, name: str) -> None:
        _ip("-n", self.bridge_ns, "link", "set", f"v{name}", "down")

    def heal(self, name: str) -> None:
        _ip("-n", self.bridge_ns, "link", "set", f"v{name}", "up")

    def close(self) -> None:
        for ns in reversed(self.namespaces):
            with contextlib.suppress(Exception):
                subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        self.namespaces.clear()
