"""Who owns a GPU VM: vSphere tags, custom attributes, inheritance, the mapping file (docs/owners.md).

Precedence, **per field** (owner, team, cost_center, email), first source that has a value wins:

1. a tag on the VM (category ``owner_category`` / ``team_category`` / ...)
2. a custom attribute on the VM (``owner_attribute`` / ...; CustomFieldsManager definitions by name)
3. a tag inherited from the VM's folders, nearest first (the VM's folder, its parent, ... up to
   the datacenter's ``vm`` folder)
4. a tag inherited from its resource pools, nearest first, then from the cluster the pools belong to
5. the mapping file (first row whose glob matches the folder path or the VM name)
6. nothing: NULL (unowned / unknown), never a made-up value

vSphere tags are not inherited by the API itself (``list-attached-tags`` returns only what is
attached to that object): inheritance is accelmon's rule, the way admins tag a folder for a team.
A category with cardinality MULTIPLE may put several tags on one object: the first name in sort
order is used, so the answer does not depend on the server's order.

``owner_source`` is where the owner came from (``tag | attribute | folder | resource_pool |
cluster | mapping``); without an owner, where the team came from; NULL when neither is known.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from accelmon.collector.vcenter.inv_model import Model
from accelmon.owners_config import MappingRule, OwnersConfig

FIELDS = ("owner", "team", "cost_center", "email")
Tags = dict[tuple[str, str], dict[str, list[str]]]  # (type, moref) -> category -> tag names


@dataclass(frozen=True)
class Place:
    """Where a VM sits: its folders and pools nearest first, its cluster, and the two paths."""

    folders: tuple[str, ...]
    pools: tuple[str, ...]
    cluster: str | None
    folder_path: str | None
    pool_path: str | None


def _chain(model: Model, start: str | None, stop_types: tuple[str, ...]) -> list[tuple[str, str, str]]:
    """(moref, type, name) from ``start`` up through parents, until a type in ``stop_types`` (included)."""
    out: list[tuple[str, str, str]] = []
    cur, seen = start, 0
    while cur and seen < 64:
        typ, props = model.objs.get(cur, ("", {}))
        if not typ:
            break
        out.append((cur, typ, props.get("name") or ""))
        if typ in stop_types:
            break
        cur = props.get("parent")
        seen += 1
    return out


def _path(chain: list[tuple[str, str, str]]) -> str | None:
    """Inventory path from the datacenter down: ``/DC0/vm/ml/prod`` (the chain stops at the datacenter)."""
    return "/" + "/".join(n for _m, _t, n in reversed(chain)) if chain else None


def place_of(model: Model, vm: str) -> Place:
    p = model.objs.get(vm, ("", {}))[1]
    fchain = _chain(model, p.get("parent"), ("Datacenter",))
    folders = tuple(m for m, t, _ in fchain if t == "Folder")
    pchain = _chain(model, p.get("resourcePool"), ("Datacenter",))
    pools = tuple(m for m, t, _ in pchain if t == "ResourcePool")
    cluster = next((m for m, t, _ in pchain if t in ("ClusterComputeResource", "ComputeResource")), None)
    if cluster is None:
        cluster, _ = model.cluster_of(p.get("runtime.host"))
    return Place(folders, pools, cluster, _path(fchain) if fchain else None, _path(pchain) if pchain else None)


def _tag_fields(tags: Tags, typ: str, moref: str, cats: dict[str, str]) -> dict[str, str]:
    on = tags.get((typ, moref), {})
    out: dict[str, str] = {}
    for f, cat in cats.items():
        names = on.get(cat)
        if names:
            out[f] = sorted(names)[0]
    return out


def attribute_keys(model: Model) -> dict[str, int]:
    """Custom attribute name -> field key, from CustomFieldsManager.field (VM or any-type fields)."""
    defs: dict[int, dict[str, Any]] = {}
    cfm = model.objs.get("CustomFieldsManager")
    if cfm is not None and cfm[0] == "CustomFieldsManager":
        defs = cfm[1].get("field") or {}
    else:
        for typ, props in model.objs.values():
            if typ == "CustomFieldsManager":
                defs = props.get("field") or {}
                break
    by_name: dict[str, int] = {}
    for k, d in sorted(defs.items()):
        if d.get("mo_type") in (None, "", "VirtualMachine", "ManagedEntity"):
            by_name.setdefault(str(d.get("name")), k)
    return by_name


def _attr_fields(model: Model, vm: str, attrs: dict[str, str], keys: dict[str, int]) -> dict[str, str]:
    values: dict[int, str] = model.objs.get(vm, ("", {}))[1].get("customValue") or {}
    out: dict[str, str] = {}
    for f, name in attrs.items():
        k = keys.get(name)
        v = values.get(k) if k is not None else None
        if v is not None and v.strip():
            out[f] = v.strip()
    return out


def resolve(model: Model, vm: str, tags: Tags, cfg: OwnersConfig, rules: Iterable[MappingRule],
            attr_keys: dict[str, int] | None = None) -> dict[str, Any]:
    """The owner fields of one VM (precedence in the module doc)."""
    cats, attrs = cfg.categories(), cfg.attributes()
    keys = attr_keys if attr_keys is not None else attribute_keys(model)
    props = model.objs.get(vm, ("", {}))[1]
    place = place_of(model, vm)
    layers: list[tuple[str, dict[str, str]]] = [
        ("tag", _tag_fields(tags, "VirtualMachine", vm, cats)),
        ("attribute", _attr_fields(model, vm, attrs, keys)),
    ]
    layers += [("folder", _tag_fields(tags, "Folder", f, cats)) for f in place.folders]
    layers += [("resource_pool", _tag_fields(tags, "ResourcePool", rp, cats)) for rp in place.pools]
    if place.cluster:
        ctype = model.objs.get(place.cluster, ("ClusterComputeResource",))[0]
        layers.append(("cluster", _tag_fields(tags, ctype, place.cluster, cats)))
    rule = next((r for r in rules if r.matches(place.folder_path, props.get("name"))), None)
    if rule is not None:
        layers.append(("mapping", {k: v for k, v in (("owner", rule.owner), ("team", rule.team),
                                                      ("email", rule.email)) if v}))
    out: dict[str, Any] = dict.fromkeys(FIELDS)
    src: dict[str, str] = {}
    for name, vals in layers:
        for f in FIELDS:
            if out[f] is None and vals.get(f):
                out[f], src[f] = vals[f], name
    out["owner_source"] = src.get("owner") or src.get("team")
    out["folder_path"] = place.folder_path
    out["resource_pool"] = place.pool_path
    return out


class OwnerTracker:
    """vm_owner rows: every GPU VM at the first cycle, afterwards only VMs whose owner data changed."""

    def __init__(self, cfg: OwnersConfig) -> None:
        self.cfg = cfg
        self.rules = cfg.rules()
        self._last: dict[str, dict[str, Any]] = {}  # vm moref -> stored owner fields

    def rows(self, model: Model, tags: Tags, vcenter_uuid: str, snap: dt.datetime) -> list[dict[str, Any]]:
        out = []
        keys = attribute_keys(model)
        for vm in model.gpu_vm_morefs():
            r = resolve(model, vm, tags, self.cfg, self.rules, keys)
            r["vm_name"] = model.objs[vm][1].get("name")
            if self._last.get(vm) == r:
                continue
            out.append({"snapshot_ts": snap, "vcenter_uuid": vcenter_uuid, "vm_moref": vm, **r})
        return out

    def committed(self, rows: list[dict[str, Any]]) -> None:
        """The rows are stored: remember them as the last known state (not before)."""
        for r in rows:
            self._last[r["vm_moref"]] = {k: v for k, v in r.items()
                                         if k not in ("snapshot_ts", "vcenter_uuid", "vm_moref")}

    def current(self) -> dict[str, dict[str, Any]]:
        """vm moref -> the owner fields last stored (for the placement info labels)."""
        return dict(self._last)


__all__ = ["FIELDS", "OwnerTracker", "Place", "attribute_keys", "place_of", "resolve"]
