"""Pod networks: which networks a pod joins, its addresses and published ports, and wiring its
network namespace to them.

A pod's networking has four moments. At create: addresses are leased (bridge networks) and host
ports reserved, so an exhausted pool or a taken port is refused then, with nothing held. At
start: the namespace file is made and wired (veth on a bridge, or the CNI plugins' ADD), and the
firewall gets the pod's published ports. At removal: unwired (CNI DEL), leases and ports given
back. At every daemon start: reconcile, so leases, veths and rules of pods that are gone go too.
The plan of a pod (its networks, addresses, ports, CNI results) is kept in its record.

Several instances (state dirs) may share the host: each has its own identity (instance.py),
its own bridges (claimed at daemon start; another's is refused then), its own table, and
veths named after it; reconcile touches nothing else."""

from __future__ import annotations

import errno
import json
import socket
import threading
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from kurmad.linux.files import read_json, write_json_atomic

from . import firewall, instance, netns
from .bridge import (
    MAX_NETWORKS,
    POD_DIGITS,
    VETH_PREFIX,
    BridgeNetwork,
    NetworkSetupError,
    parse_veth,
)
from .cni import DEFAULT_TIMEOUT, CniError, CniNetwork, CniResult
from .config import HOST, NONE, CniSpec, NetworkError, NetworkSpec
from .instance import Instance
from .ipam import IpamError
from .plan import Attachment, NetworkPlan, PublishedPort
from .ports import PortRequest


class PodNetworks:
    def __init__(
        self, state_dir: Path, specs: Sequence[NetworkSpec], default: str | None = None
    ) -> None:
        self.state_dir = state_dir
        self.instance = Instance.of(state_dir)
        self.bridges: dict[str, BridgeNetwork] = {}
        self.cni: dict[str, CniNetwork] = {}
        for spec in specs:
            if isinstance(spec, CniSpec):
                self.cni[spec.name] = _cni_network(spec)
            else:
                self.bridges[spec.name] = BridgeNetwork(spec, state_dir, self.instance)
        self.default = default or (specs[0].name if specs else NONE)
        self.ports_file = state_dir / "networks" / "ports.json"
        self._ports: dict[str, PublishedPort] = self._load_ports()
        self._lock = threading.RLock()
        self._addresses: dict[str, str] = {}  # wired pod -> its first address, for port forwards

    # -- what a pod asks for ------------------------------------------------------------------------

    def selection(self, asked: str | None) -> list[str]:
        """The networks of a pod from its annotation: none, host, or names; absent: the default."""
        names = [n.strip() for n in (asked or self.default).split(",") if n.strip()]
        if names in ([NONE], [HOST]):
            return names
        if len(names) > MAX_NETWORKS:
            raise NetworkError(
                f"networks: a pod joins at most {MAX_NETWORKS} networks, not {len(names)}"
            )
        for name in names:
            if name in (NONE, HOST):
                raise NetworkError(f"networks: {name} cannot be combined with other networks")
            if name not in self.bridges and name not in self.cni:
                known = ", ".join([*self.bridges, *self.cni]) or "none configured"
                raise NetworkError(f"networks: no network named {name} (known: {known})")
        return names

    def plan(self, pod_uuid: str, names: list[str], ports: list[PortRequest]) -> NetworkPlan:
        """Lease the addresses and reserve the host ports of a new pod, or hold nothing and
        raise NetworkError."""
        if ports and names in ([NONE], [HOST]):
            raise NetworkError(f"ports: a pod on network {names[0]} cannot publish ports")
        try:
            networks = tuple(
                Attachment(name, f"eth{index}", index, self._lease(pod_uuid, name))
                for index, name in enumerate(names if names not in ([NONE], [HOST]) else [])
            )
            return NetworkPlan(networks, self._reserve_ports(pod_uuid, ports))
        except (IpamError, NetworkError) as err:
            self.release(pod_uuid)
            raise NetworkError(str(err)) from None

    def _lease(self, pod_uuid: str, network: str) -> str:
        """A bridge network's address for the pod; a CNI network's comes from its plugins."""
        return self.bridges[network].ipam.allocate(pod_uuid) if network in self.bridges else ""

    def _reserve_ports(self, pod_uuid: str, ports: list[PortRequest]) -> tuple[PublishedPort, ...]:
        elsewhere = self._ports_of_other_instances() if ports else {}
        with self._lock:
            for request in ports:
                holder = self._ports.get(request.key)
                if holder is not None and holder.pod != pod_uuid:
                    raise NetworkError(
                        f"ports: host port {request.key} is published by pod {holder.pod} already"
                    )
                if request.key in elsewhere:
                    raise NetworkError(
                        f"ports: host port {request.key} is published by another kurmad "
                        f"instance already (table inet {elsewhere[request.key]})"
                    )
                _check_port_free(request)
            reserved = tuple(
                PublishedPort(pod_uuid, r.protocol, r.host_port, r.port) for r in ports
            )
            for entry in reserved:
                self._ports[entry.key] = entry
            self._save_ports()
        return reserved

    def _ports_of_other_instances(self) -> dict[str, str]:
        try:
            return firewall.ports_of_other_instances(self.instance.table)
        except firewall.FirewallError as err:
            raise NetworkError(f"ports: {err}") from None

    def _load_ports(self) -> dict[str, PublishedPort]:
        if not self.ports_file.exists():
            return {}
        try:
            saved = read_json(self.ports_file)
            return {
                key: PublishedPort.from_json(entry, f"ports[{key}]") for key, entry in saved.items()
            }
        except (ValueError, AttributeError) as err:
            raise NetworkError(f"{self.ports_file}: {err}") from None

    def _save_ports(self) -> None:
        self.ports_file.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.ports_file, {key: p.to_json() for key, p in self._ports.items()})

    # -- start: wiring ---------------------------------------------------------------------------------

    def wire(self, pod_uuid: str, namespace: Path, plan: NetworkPlan) -> NetworkPlan:
        """Make the namespace file and wire it: the plan as wired (gateways, what CNI said). On
        failure unwire what was done and raise."""
        netns.create(namespace)
        try:
            with IPRoute() as ipr:
                for entry in plan.networks:
                    # the plan so far, so that a failure unwires exactly what was attempted
                    plan = plan.with_attachment(replace(entry, attempted=entry.name in self.cni))
                    plan = plan.with_attachment(self._attach(ipr, pod_uuid, namespace, entry))
            first = plan.first_address()
            if first:
                with self._lock:
                    self._addresses[pod_uuid] = first
            if plan.ports:
                self._sync_firewall()
        except (NetworkSetupError, CniError, NetlinkError, OSError, firewall.FirewallError) as err:
            self.unwire(pod_uuid, namespace, plan)
            raise NetworkError(f"pod {pod_uuid}: {err}") from None
        return plan

    def _attach(
        self, ipr: IPRoute, pod_uuid: str, namespace: Path, entry: Attachment
    ) -> Attachment:
        """Wire one network; its first has the default route."""
        if entry.name in self.bridges:
            bridge = self.bridges[entry.name]
            bridge.attach(ipr, pod_uuid, entry.index, namespace, entry.ifname, entry.address,
                          default_route=entry.index == 0)  # fmt: skip
            return replace(entry, gateway=bridge.gateway)
        result = self.cni[entry.name].add(pod_uuid, str(namespace), entry.ifname)
        addresses = result.addresses_on(entry.ifname) or [ip.address for ip in result.ips]
        return replace(entry, cni=result.to_json(), attempted=True,
                       address=addresses[0] if addresses else "")  # fmt: skip

    def unwire(self, pod_uuid: str, namespace: Path, plan: NetworkPlan) -> list[str]:
        """Undo the wiring: the CNI plugins' DEL, then the namespace file. Letting go of the
        namespace takes its veths with it (the kernel destroys them once the namespace is
        gone, without the ~15 ms wait a deletion costs; a veth never outlives a failed attach,
        which deletes it itself). Goes on past errors, returns them."""
        problems = []
        for entry in reversed(plan.networks):
            if entry.name in self.cni and (entry.cni or entry.attempted):
                previous = CniResult.from_json(entry.cni) if entry.cni else None
                try:
                    self.cni[entry.name].delete(pod_uuid, str(namespace), entry.ifname, previous)
                except CniError as err:
                    problems.append(f"network {entry.name}: {err}")
        netns.remove(namespace)
        with self._lock:
            had_ports = self._addresses.pop(pod_uuid, None) is not None and bool(plan.ports)
        if had_ports:
            try:
                self._sync_firewall()
            except firewall.FirewallError as err:
                problems.append(str(err))
        return problems

    # -- removal and reconciling -------------------------------------------------------------------------

    def release(self, pod_uuid: str) -> None:
        """Give back the pod's addresses and host ports."""
        for bridge in self.bridges.values():
            bridge.ipam.release(pod_uuid)
        with self._lock:
            mine = [k for k, v in self._ports.items() if v.pod == pod_uuid]
            for key in mine:
                del self._ports[key]
            if mine:
                self._save_ports()
            # Only a pod still wired has forwards in the table; unwire has rewritten it otherwise.
            if mine and self._addresses.pop(pod_uuid, None) is not None:
                self._sync_firewall()

    def reconcile(self, live: dict[str, NetworkPlan], started: set[str]) -> list[str]:
        """After a (re)start: claim the bridges (BridgeInUse, with nothing changed, if one is
        another's), forget what belongs to pods that no longer exist, remove this instance's
        host veths that no started pod owns, and write its table from what remains. ``live``
        maps each existing pod to its plan (a NEW pod keeps its leases and ports); ``started``
        are those past NEW, the only ones wired (a NEW pod's veth is a start a crash cut short,
        and the kernel takes its time to remove it with its namespace)."""
        done = [f"instance {self.instance.id}: table inet {self.instance.table}, "
                f"host veths {VETH_PREFIX}{self.instance.tag}*"]  # fmt: skip
        if self.bridges:
            instance.hold(self.instance)  # what owns bridges must be seen running
            with IPRoute() as ipr:
                done += [bridge.ensure_bridge(ipr) for bridge in self.bridges.values()]
        for bridge in self.bridges.values():
            released = bridge.ipam.release_unless(set(live))
            done += [f"released {a} on {bridge.spec.name}" for a in released]
        with self._lock:
            stale = [k for k, v in self._ports.items() if v.pod not in live]
            for key in stale:
                del self._ports[key]
            if stale:
                self._save_ports()
            done += [f"unpublished {k}" for k in stale]
        done += self._remove_stray_veths({p.replace("-", "")[:POD_DIGITS] for p in started})
        with self._lock:
            self._addresses = {
                pod: first
                for pod, plan in live.items()
                if pod in started and (first := plan.first_address())
            }
        if self.bridges or self._ports:
            self._sync_firewall()
        return done

    def _remove_stray_veths(self, live_prefixes: set[str]) -> list[str]:
        """This instance's host veths whose pod is gone. A veth named like ours but on a
        bridge that is not ours is another instance's whose tag is the same: left alone."""
        removed = []
        with IPRoute() as ipr:
            links = ipr.get_links()
            bridges = {b.spec.bridge for b in self.bridges.values()}
            ours = {link["index"] for link in links if link.get("ifname") in bridges}
            for link in links:
                name = parse_veth(link.get("ifname") or "")
                if name is None or name.instance != self.instance.tag or name.pod in live_prefixes:
                    continue
                if link.get("master") not in (None, *ours):
                    continue
                try:
                    ipr.link("del", index=link["index"])
                    removed.append(f"removed veth {name}")
                except NetlinkError as err:
                    if err.code != errno.ENODEV:
                        raise
        return removed

    def _sync_firewall(self) -> None:
        """The whole table again: masquerading for the bridge networks, and the published ports
        of the pods that are wired."""
        masquerades = [
            firewall.Masquerade(b.spec.name, str(b.network))
            for b in self.bridges.values()
            if b.spec.masquerade
        ]
        with self._lock:
            forwards = [firewall.Forward(v.protocol, v.host_port, self._addresses[v.pod], v.port, v.pod)
                        for v in self._ports.values() if v.pod in self._addresses]  # fmt: skip
        if masquerades or forwards:
            firewall.replace(self.instance.table, masquerades, forwards)
        else:
            firewall.remove(self.instance.table)


def _check_port_free(request: PortRequest) -> None:
    """A host port that something on the host listens on already is refused, not shadowed."""
    kind = socket.SOCK_STREAM if request.protocol == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as probe:
        try:
            probe.bind(("0.0.0.0", request.host_port))
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise NetworkError(
                    f"ports: host port {request.key} is in use on this host"
                ) from None
            raise


def _cni_network(spec: CniSpec) -> CniNetwork:
    timeout = DEFAULT_TIMEOUT if spec.timeout is None else spec.timeout
    return CniNetwork(json.loads(spec.config), plugin_dirs=spec.plugin_dirs, timeout=timeout)
