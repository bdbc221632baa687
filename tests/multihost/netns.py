"""Hosts of their own on one machine: network namespaces joined by a private bridge.

A ``Network`` is a switch namespace holding a bridge plus one namespace per host, each
plugged into the bridge by a veth pair and given an address of its own (``SUBNET``). Nothing
joins it to the machine's own network stack, so traffic stays inside the namespaces the
test created; their names carry a per-run id, so parallel runs never meet.

Faults, as a fleet spread over machines meets them:

- ``partition(host)``: the host's port on the switch goes down, a pulled cable: packets
  vanish both ways in silence (no reset, no refusal); clients wait out their timeouts and
  TCP connections retransmit until the link is back.
- ``cut(host, service)``: nftables in the host's namespace drops (or rejects) traffic to one
  service (Redis, S3) in one direction or both; the rest of the network works.
- ``heal(host)``: the link is up again and every rule of the host is gone.
- ``throttle(host, port, rate)``: a slow link to one port (an upload that takes seconds).

``enter(host)`` moves the calling thread into a host's namespace: processes it starts from
then on run on that host. Needs root (``CAP_NET_ADMIN``) and ``ip`` and ``nft``.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field

SUBNET = "10.77.0"  # /24 on the private bridge only: it is never routed anywhere
CLONE_NEWNET = 0x40000000
TABLE = "dfcut"
_libc = ctypes.CDLL(None, use_errno=True)


@dataclass(frozen=True)
class Host:
    name: str  # what the test calls it: "services", "w1"...
    netns: str  # the namespace, unique per run
    address: str
    port: str  # its veth end on the switch

    @property
    def exec_prefix(self) -> tuple[str, ...]:
        """Run a command on this host (``ip netns exec`` execs it: pid and group stay)."""
        return ("ip", "netns", "exec", self.netns)


@dataclass(frozen=True)
class Service:
    """Something a host listens on, as a cut names it."""

    host: Host
    port: int


def run(*command: str, stdin: str | None = None) -> str:
    done = subprocess.run(command, input=stdin, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr}")
    return done.stdout


@dataclass
class Network:
    run_id: str
    switch: str
    hosts: dict[str, Host] = field(default_factory=dict)

    @classmethod
    def create(cls, names: list[str]) -> Network:
        """A switch and ``names`` hosts on it, addresses ``SUBNET.1`` upwards in order."""
        run_id = f"df{os.getpid()}{secrets.token_hex(2)}"
        network = cls(run_id, f"{run_id}-switch")
        try:
            run("ip", "netns", "add", network.switch)
            run("ip", "-n", network.switch, "link", "add", "br0", "type", "bridge")
            run("ip", "-n", network.switch, "link", "set", "br0", "up")
            for number, name in enumerate(names, start=1):
                network._add_host(name, f"{SUBNET}.{number}", f"p{number}")
        except BaseException:
            network.destroy()
            raise
        return network

    def _add_host(self, name: str, address: str, port: str) -> None:
        host = Host(name, f"{self.run_id}-{name}", address, port)
        self.hosts[name] = host
        run("ip", "netns", "add", host.netns)
        run("ip", "-n", self.switch, "link", "add", port, "type", "veth",
            "peer", "name", "eth0", "netns", host.netns)
        run("ip", "-n", self.switch, "link", "set", port, "master", "br0", "up")
        run("ip", "-n", host.netns, "addr", "add", f"{address}/24", "dev", "eth0")
        run("ip", "-n", host.netns, "link", "set", "eth0", "up")
        run("ip", "-n", host.netns, "link", "set", "lo", "up")

    def destroy(self) -> None:
        """Every namespace of the run (their veth pairs and the bridge go with them)."""
        for netns in [*(h.netns for h in self.hosts.values()), self.switch]:
            with contextlib.suppress(RuntimeError):
                run("ip", "netns", "del", netns)

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]

    # -- faults -------------------------------------------------------------------------
    def partition(self, name: str) -> None:
        """Cut the host off from every other one: its switch port down, packets dropped."""
        run("ip", "-n", self.switch, "link", "set", self[name].port, "down")

    def cut(self, name: str, service: Service, direction: str = "both",
            reject: bool = False) -> None:
        """Drop the host's traffic with ``service`` only: ``out`` (requests vanish), ``in``
        (answers vanish) or ``both``. ``reject``: requests are refused at once (a TCP reset,
        as a firewall that rejects sends) instead of vanishing."""
        host, peer = self[name], service.host.address
        rules = [f"table inet {TABLE} {{",
                 "  chain out { type filter hook output priority 0; policy accept; }",
                 "  chain in { type filter hook input priority 0; policy accept; }",
                 "}"]
        if reject or direction in ("out", "both"):
            verdict = "reject with tcp reset" if reject else "drop"
            rules.append(f"add rule inet {TABLE} out ip daddr {peer} tcp dport {service.port} "
                         f"{verdict}")
        if not reject and direction in ("in", "both"):  # (a reset must still come in)
            rules.append(f"add rule inet {TABLE} in ip saddr {peer} tcp sport {service.port} drop")
        run(*host.exec_prefix, "nft", "-f", "-", stdin="\n".join(rules) + "\n")

    def heal(self, name: str) -> None:
        """The host's link up and every cut of it gone."""
        host = self[name]
        run("ip", "-n", self.switch, "link", "set", host.port, "up")
        with contextlib.suppress(RuntimeError):  # no cut was made
            run(*host.exec_prefix, "nft", "delete", "table", "inet", TABLE)

    def throttle(self, name: str, port: int, rate: str) -> None:
        """What the host sends to ``port`` over its own loopback (a client of a server on
        the same host) goes at ``rate`` (``tc`` units, e.g. ``2mbit``): a slow upload."""
        netns = self[name].netns
        run("ip", "-n", netns, "link", "set", "lo", "mtu", "1500")  # htb's default burst
        run("tc", "-n", netns, "qdisc", "add", "dev", "lo", "root", "handle", "1:", "htb",
            "default", "2")
        for classid, class_rate in (("1:1", rate), ("1:2", "10gbit")):
            run("tc", "-n", netns, "class", "add", "dev", "lo", "parent", "1:", "classid",
                classid, "htb", "rate", class_rate)
        run("tc", "-n", netns, "filter", "add", "dev", "lo", "parent", "1:", "protocol", "ip",
            "u32", "match", "ip", "dport", str(port), "0xffff", "flowid", "1:1")

    # -- being on a host ----------------------------------------------------------------
    @contextlib.contextmanager
    def enter(self, name: str) -> Iterator[Host]:
        """The calling thread (and what it starts) on ``name``'s network, back after."""
        host = self[name]
        with open("/proc/thread-self/ns/net") as own, open(f"/run/netns/{host.netns}") as there:
            _setns(there.fileno())
            try:
                yield host
            finally:
                _setns(own.fileno())


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"setns: {os.strerror(errno)} (needs root)")


@contextlib.contextmanager
def network(names: list[str]) -> Iterator[Network]:
    """A ``Network`` of ``names`` for the block, torn down after however it ends."""
    net = Network.create(names)
    try:
        yield net
    finally:
        net.destroy()
