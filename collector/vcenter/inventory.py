"""Inventory: one PropertyCollector filter over a ContainerView; later polls fetch only changes.

First poll: ``WaitForUpdatesEx(version="")`` on a private PropertyCollector whose filter
covers every Datacenter, Folder, (Cluster)ComputeResource, HostSystem and VirtualMachine
(one traversal, no per-object round trips).  Later polls: ``WaitForUpdatesEx(version,
maxWaitSeconds=0)`` returns only what changed since.  The answers are read with
:mod:`rawxml`: only hosts, clusters and VMs with a ``VirtualPCIPassthrough`` device (or
known GPU VMs) are parsed, which is what makes a 10,000-VM vCenter cheap to poll.

GPU ↔ NUMA rule (``host_numa_node``): the host NUMA node of a GPU is the
``HostNumaNode.typeId`` whose ``pciId`` list contains the GPU's PCI id (SBDF, lower case,
any segment); when the node lists only an upstream bridge or root port, the GPU's
``parentBridge`` chain (``hardware.pciDevice``) is followed up to a listed id.  A VM device's
physical GPU is the passthrough backing ``id``, the dynamic backing ``assignedId``, or for a
vGPU the host ``config.graphicsInfo[]`` entry that lists the VM (when exactly one does per
vGPU device).
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import threading
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any

from pyVmomi import vim, vmodl

from accelmon.collector.vcenter import rawxml as rx
from accelmon.collector.vcenter.inv_model import Model, _strip_ts
from accelmon.collector.vcenter.inv_props import CFM_PROPS, TYPES_PROPS, VM_PROPS, norm_pci
from accelmon.collector.vcenter.session import VCenterSession
from accelmon.collector.vcenter.vgpu import GIB

log = logging.getLogger(__name__)

LISTEN_WAIT_S = 10  # long-poll length; below the session's HTTP timeout


# ------------------------------------------------------------------ the collector
@dataclass
class PollStats:
    full: bool = False
    updates: int = 0
    skipped: int = 0
    bytes: int = 0
    calls: int = 0
    changed: bool = False


class Inventory:
    """Keeps a filter on the server and the model in memory; :meth:`poll` brings it up to date."""

    def __init__(self, session: VCenterSession) -> None:
        self.session = session
        self.model = Model()
        self._gen = -1
        self._pc: Any = None
        self._view: Any = None
        self._version: str | None = None
        self._last_rows: dict[str, list[tuple[Any, ...]]] | None = None
        self.vcenter_uuid: str | None = None
        self.about: Any = None
        # background long-poll (WaitForUpdatesEx with maxWaitSeconds): see listen()
        self.lock = threading.RLock()  # guards the model against the listener thread
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._pending = PollStats()
        self._listen_error: BaseException | None = None

    # -------------------------------------------------------------- server-side objects
    def _setup(self) -> None:
        s = self.session
        c = s.content
        self.about = c.about
        self.vcenter_uuid = c.about.instanceUuid or c.about.name
        self._view = c.viewManager.CreateContainerView(
            c.rootFolder,
            [vim.Datacenter, vim.Folder, vim.ComputeResource, vim.ClusterComputeResource, vim.ResourcePool,
             vim.HostSystem, vim.VirtualMachine],
            True,
        )
        ts = vmodl.query.PropertyCollector.TraversalSpec(
            name="view", type=vim.view.ContainerView, path="view", skip=False
        )
        pcls = vmodl.query.PropertyCollector
        objs = [pcls.ObjectSpec(obj=self._view, skip=True, selectSet=[ts])]
        props = [pcls.PropertySpec(type=getattr(vim, t), pathSet=list(p)) for t, p in TYPES_PROPS.items()]
        if c.customFieldsManager is not None:  # custom attribute names, in the same pass
            objs.append(pcls.ObjectSpec(obj=c.customFieldsManager, skip=False))
            props.append(pcls.PropertySpec(type=vim.CustomFieldsManager, pathSet=list(CFM_PROPS)))
        spec = pcls.FilterSpec(objectSet=objs, propSet=props)
        self._pc = c.propertyCollector.CreatePropertyCollector()
        self._pc.CreateFilter(spec, partialUpdates=False)
        self._spec = spec
        self._version = ""
        self._gen = s.generation

    def _wait(self, version: str) -> bytes:
        opts = vmodl.query.PropertyCollector.WaitOptions(maxWaitSeconds=0)
        return self.session.invoke_raw(self._pc, "WaitForUpdatesEx", version, opts)

    # -------------------------------------------------------------- polling
    def poll(self) -> PollStats:
        """Bring the model up to date.

        While the listener thread is healthy it has already applied every change the server
        pushed: nothing is asked, the changes it collected are reported.  Otherwise (first
        poll, listener stopped by an error or a re-login) the server is asked directly; an
        error is raised here, in the poller's thread."""
        with self.lock:
            if self._thread is not None and self._thread.is_alive() and self._listen_error is None:
                st, self._pending = self._pending, PollStats()
                return st
        self.stop_listening()
        err, self._listen_error = self._listen_error, None
        if err is not None:
            log.debug("vCenter %s: update listener stopped: %s", self.session.target, err)
        with self.lock:
            return self.session.call(self._poll)

    # -------------------------------------------------------------- background long-poll
    def listen(self) -> None:
        """Start a thread that waits on ``WaitForUpdatesEx`` (the vSphere way of being told
        about changes) and applies them as they come; :meth:`poll` then costs nothing."""
        if self._thread is not None and self._thread.is_alive():
            return
        if self._pc is None or not self._version:
            return
        self._stop = threading.Event()
        self._listen_error = None
        self._thread = threading.Thread(target=self._listen, name="vcenter-updates", daemon=True)
        self._thread.start()

    def _listen(self) -> None:
        stop = self._stop
        wait = max(1, min(LISTEN_WAIT_S, int(self.session.timeout) - 5))
        opts = vmodl.query.PropertyCollector.WaitOptions(maxWaitSeconds=wait)
        gen = self._gen
        while not stop.is_set():
            try:
                if self.session.generation != gen:
                    raise RuntimeError("session changed")
                data = self.session.invoke_raw(self._pc, "WaitForUpdatesEx", self._version, opts)
                if stop.is_set():
                    return
                ans = rx.parse_answer(data, self.model.keep)
                with self.lock:
                    need_full = self.model.apply(ans.updates)
                    if need_full:
                        self._read_full(need_full, self._pending)
                    if ans.version:
                        self._version = ans.version
                    self._pending.calls += 1
                    self._pending.bytes += len(data)
                    self._pending.updates += len(ans.updates)
                    self._pending.skipped += ans.skipped
            except BaseException as e:  # noqa: BLE001 - handed to the next poll()
                if not stop.is_set():
                    self._listen_error = e
                return

    def stop_listening(self, wait: bool = True) -> None:
        """Stop the listener.  With ``wait=False`` (closing) the thread is only told to stop:
        its pending long-poll ends by itself (logging out ends it on vCenter) and it exits
        without touching anything."""
        t = self._thread
        if t is None:
            return
        self._stop.set()
        if wait:
            t.join(timeout=self.session.timeout + 1)
        self._thread = None

    def _poll(self) -> PollStats:
        st = PollStats()
        if self._gen != self.session.generation or self._pc is None:
            self._setup()
        if self._version == "":
            st.full = True
            self.model = Model(profile_fb_gib=self.model.profile_fb_gib)
        version = self._version or ""
        while True:
            try:
                data = self._wait(version)
            except (vmodl.fault.InvalidArgument, vmodl.query.InvalidCollectorVersion):
                if not version:
                    raise
                self._version = ""  # the server forgot our version: read everything again
                return self._poll()
            st.calls += 1
            st.bytes += len(data)
            ans = rx.parse_answer(data, self.model.keep)
            st.updates += len(ans.updates)
            st.skipped += ans.skipped
            need_full = self.model.apply(ans.updates)
            if need_full:
                self._read_full(need_full, st)
            if ans.version is not None:
                version = ans.version
            if not ans.truncated:
                break
        self._version = version
        self._pending = PollStats()
        if st.full:
            self.model.vm_count = st.updates + st.skipped
            self._vgpu_profiles()
        return st

    def _read_full(self, vms: list[str], st: PollStats) -> None:
        """All properties of VMs that gained a GPU device in a delta."""
        pcls = vmodl.query.PropertyCollector
        spec = pcls.FilterSpec(
            objectSet=[pcls.ObjectSpec(obj=vim.VirtualMachine(m, self.session.stub), skip=False) for m in vms],
            propSet=[pcls.PropertySpec(type=vim.VirtualMachine, pathSet=list(VM_PROPS))],
            reportMissingObjectsInResults=False,
        )
        data = self.session.invoke_raw(self.session.content.propertyCollector, "RetrievePropertiesEx",
                                       [spec], pcls.RetrieveOptions())
        st.calls += 1
        st.bytes += len(data)
        ans = rx.parse_answer(data, self.model.keep, chunk_tag=b"objects")
        for u in ans.updates:
            u.kind = "enter"
        self.model.apply(ans.updates)

    def _vgpu_profiles(self) -> None:
        """``ConfigTarget.vgpuProfileInfo[].fbSizeInGib`` per profile, where the API has it
        (vSphere 7.0.3+); one query per cluster environment browser, first poll only."""
        seen: set[str] = set()
        for _m, (t, p) in list(self.model.objs.items()):
            eb = p.get("environmentBrowser")
            if t not in ("ClusterComputeResource", "ComputeResource") or not eb or eb in seen:
                continue
            seen.add(eb)
            try:
                data = self.session.invoke_raw(vim.EnvironmentBrowser(eb, self.session.stub), "QueryConfigTarget")
            except Exception as e:  # noqa: BLE001 - optional refinement only
                log.debug("QueryConfigTarget(%s): %s", eb, e)
                continue
            for m in re.finditer(rb"<vgpuProfileInfo>(.*?)</vgpuProfileInfo>", data, re.S):
                el = ET.fromstring(b"<r xmlns='urn:vim25'>" + m.group(1) + b"</r>")
                name = rx.child_text(el, "profileName")
                size = rx.child_int(el, "fbSizeInGib")
                if name and size:
                    self.model.profile_fb_gib[name] = size
            if len(seen) >= 64:
                break

    # -------------------------------------------------------------- snapshots
    def snapshot_if_changed(self, now: dt.datetime, url: str, name: str | None) -> dict[str, list[dict[str, Any]]]:
        """All inventory rows when something differs from the last written snapshot, else {}."""
        if not self.model.dirty and self._last_rows is not None:
            return {}
        self.model.dirty = False
        rows = self.model.rows(self.vcenter_uuid or "", now)
        about = self.about
        rows["inv_vcenter"] = [
            {
                "snapshot_ts": now,
                "vcenter_uuid": self.vcenter_uuid,
                "url": url,
                "name": name,
                "api_version": getattr(about, "apiVersion", None),
                "full_name": getattr(about, "fullName", None),
            }
        ]
        key = _strip_ts(rows)
        if key == self._last_rows:
            return {}
        self._last_rows = key
        return rows

    def forget_snapshot(self) -> None:
        """Make the next snapshot be written (e.g. the last write failed)."""
        self._last_rows = None
        self.model.dirty = True


__all__ = ["GIB", "Inventory", "Model", "norm_pci"]
