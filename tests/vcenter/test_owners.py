"""Owners of GPU VMs from the seeded vcsim: tags (tagging REST API), custom attributes, folder /
resource pool / cluster inheritance, the mapping file, precedence, history (docs/owners.md)."""

from __future__ import annotations

import base64
import http.client
import json
import logging
import ssl
from pathlib import Path
from typing import Any

import pytest

from accelmon.cli import main
from accelmon.collector.vcenter.source import VCenterSource
from accelmon.config import ConfigError, ExporterConfig, parse
from accelmon.daemon.state import DaemonState
from accelmon.exporter.server import MetricsApp
from accelmon.owners_config import OwnersConfig
from accelmon.sim.vcsim import Vcsim
from accelmon.store.writer import Store

from .conftest import vc_config

FIELDS = ("owner", "team", "cost_center", "email")


def _rows(store: Store, sql: str) -> list[dict[str, Any]]:
    con = store.connect()
    try:
        cur = con.execute(sql)
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]
    finally:
        con.close()


def _by_name(store: Store, view: str = "latest_vm_owner") -> dict[str, dict[str, Any]]:
    return {r["vm_name"]: r for r in _rows(store, f"SELECT * FROM {view}")}


def _expected(sim: Vcsim) -> dict[str, dict[str, Any]]:
    return {o["vm"]: o for o in sim.manifest["owners"]}


@pytest.fixture(scope="module")
def polled(vcsim: Vcsim, tmp_path_factory: pytest.TempPathFactory) -> tuple[Store, VCenterSource, Any]:
    store = Store(tmp_path_factory.mktemp("owners") / "data")
    src = VCenterSource(vc_config(vcsim))
    first = src.collect_inventory(store)
    second = src.collect_inventory(store)
    yield store, src, (first, second)
    src.close()


def test_owners_from_tags_attributes_and_inheritance_match_the_seeding(vcsim: Vcsim, polled: Any) -> None:
    store, _src, (first, _second) = polled
    want = _expected(vcsim)
    gpu_vms = {v["name"] for v in vcsim.manifest["vms"] if v["gpus"]}
    assert set(want) == gpu_vms
    got = _by_name(store)
    assert set(got) == gpu_vms  # every GPU VM, owned or not, has its row
    assert first.rows["vm_owner"] == len(gpu_vms)
    sources = set()
    for name, w in want.items():
        g = got[name]
        for f in FIELDS:
            assert g[f] == w[f], (name, f, g)
        expect_src = None if w["owner_source"] == "unowned" else w["owner_source"]
        assert g["owner_source"] == expect_src, (name, g)
        assert g["folder_path"] == w["folder_path"]
        if w["resource_pool"]:
            assert g["resource_pool"].endswith("/Resources/" + w["resource_pool"])
        else:
            assert g["resource_pool"].endswith("/Resources")
        sources.add(w["owner_source"])
    # the seeding covers each way of owning a VM, and VMs nobody owns
    assert sources == {"tag", "attribute", "folder", "resource_pool", "unowned"}
    unowned = [g for g in got.values() if g["owner_source"] is None]
    assert unowned and all(g[f] is None for g in unowned for f in FIELDS)  # NULL, not "" or "unknown"


def test_nothing_changed_writes_no_row_and_tags_are_read_in_one_call(polled: Any) -> None:
    store, src, (_first, second) = polled
    assert "vm_owner" not in second.rows
    n = len(_rows(store, "SELECT * FROM vm_owner"))
    before = src.tagging.calls
    res = src.collect_inventory(store)
    assert "vm_owner" not in res.rows and len(_rows(store, "SELECT * FROM vm_owner")) == n
    assert src.tagging.calls - before == 1  # one bulk association read; names cached (TTL)


def test_placement_info_carries_owner_and_team(vcsim: Vcsim, polled: Any) -> None:
    store, _src, _ = polled
    st = DaemonState()
    st.apply({name: _rows(store, f"SELECT * EXCLUDE (date) FROM {name}")
              for name in ("inv_vcenter", "inv_host", "inv_vm", "inv_vm_gpu", "vm_owner")})
    text = MetricsApp(st, ExporterConfig(), process_metrics=False).render().decode()
    place = [ln for ln in text.splitlines() if ln.startswith("accelmon_vm_placement_info{")]
    want = _expected(vcsim)
    assert len(place) == len(want)
    for name, w in want.items():
        (line,) = [ln for ln in place if f'vm_name="{name}"' in ln]
        assert f'owner="{w["owner"] or ""}"' in line and f'team="{w["team"] or ""}"' in line, line


def _mapping(tmp: Path, text: str) -> Path:
    p = tmp / "owners.csv"
    p.write_text(text)
    return p


def test_mapping_file_fills_only_what_vsphere_lacks(vcsim: Vcsim, tmp_path: Path) -> None:
    want = _expected(vcsim)
    unowned = sorted(n for n, w in want.items() if w["owner_source"] == "unowned")
    bob = next(n for n, w in want.items() if w["owner"] == "bob")  # folder tags, no email in vSphere
    rows = [f"{unowned[0]},mapped-team,mapped-owner,mapped@example.com",
            "/DC0/vm/nlp*,not-the-team,not-the-owner,nlp-list@example.com"]
    path = _mapping(tmp_path, "pattern,team,owner,email\n" + "\n".join(rows) + "\n")
    store = Store(tmp_path / "data")
    src = VCenterSource(vc_config(vcsim), owners=OwnersConfig(mapping_file=path))
    try:
        src.collect_inventory(store)
    finally:
        src.close()
    got = _by_name(store)
    m = got[unowned[0]]
    assert (m["owner"], m["team"], m["email"], m["owner_source"]) == (
        "mapped-owner", "mapped-team", "mapped@example.com", "mapping")
    b = got[bob]  # vSphere's folder tags win over the mapping file; the file adds the missing email
    assert (b["owner"], b["team"], b["owner_source"], b["email"]) == ("bob", "nlp", "folder", "nlp-list@example.com")
    for n in unowned[1:]:
        assert got[n]["owner_source"] is None


@pytest.mark.parametrize("body, row", [
    ("pattern,team,owner,email\ngpu-*,ml,ann,ann@example.com\ngpu-x,ml\n", 3),
    ("pattern,team,owner,email\n,ml,ann,ann@example.com\n", 2),
    ("pattern,team,owner,email\ngpu-*,ml,ann,not-an-address\n", 2),
    ("vm,team\n", 1),
])
def test_bad_mapping_file_is_one_line_naming_file_and_row(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                          body: str, row: int) -> None:
    path = _mapping(tmp_path, body)
    with pytest.raises(ConfigError) as ei:
        parse({"owners": {"mapping_file": str(path)}}, "accelmon.toml", env={})
    (line,) = ei.value.lines
    assert str(path) in line and f"row {row}:" in line and "owners.mapping_file" in line
    cfg = tmp_path / "accelmon.toml"
    cfg.write_text(f'[owners]\nmapping_file = "{path}"\n')
    with pytest.raises(SystemExit) as ex:
        main(["check-config", str(cfg)])
    assert ex.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"row {row}:" in err[0] and "Traceback" not in err[0]


def test_bad_owner_config_names_the_field() -> None:
    with pytest.raises(ConfigError) as ei:
        parse({"owners": {"team_category": "  ", "owner_attribute": "Owner", "bogus": 1}}, "a.toml", env={})
    text = "\n".join(ei.value.lines)
    assert "owners.team_category" in text and "owners.bogus: unknown key" in text


# ---------------------------------------------------------------- live changes (own simulator)
class _Rest:
    """The test's own tagging REST client (what a vSphere admin's script does), /rest flavour."""

    def __init__(self, sim: Vcsim) -> None:
        u = sim.url.split("//", 1)[1].split("/", 1)[0]
        host, port = u.rsplit(":", 1)
        ctx = ssl.create_default_context(cafile=str(sim.ca_file))
        self.conn = http.client.HTTPSConnection(host, int(port), context=ctx, timeout=10)
        auth = base64.b64encode(f"{sim.user}:{sim.password}".encode()).decode()
        self.sid = self.call("POST", "/rest/com/vmware/cis/session", headers={"Authorization": "Basic " + auth})

    def call(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> Any:
        h = dict(headers or {})
        if getattr(self, "sid", None):
            h["vmware-api-session-id"] = self.sid
        data = json.dumps(body).encode() if body is not None else None
        if data:
            h["Content-Type"] = "application/json"
        self.conn.request(method, path, body=data, headers=h)
        r = self.conn.getresponse()
        raw = r.read()
        assert r.status == 200, (path, r.status, raw)
        return json.loads(raw)["value"] if raw else None

    def find(self, kind: str, name: str, category: str | None = None) -> str:
        for i in self.call("GET", f"/rest/com/vmware/cis/tagging/{kind}"):
            o = self.call("GET", f"/rest/com/vmware/cis/tagging/{kind}/id:{i}")
            if o["name"] == name and (category is None or o["category_id"] == category):
                return i
        raise KeyError(name)


def test_changed_tag_and_cluster_tag_write_new_history_rows(vcsim_factory: Any, tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    sim = vcsim_factory()  # the small estate, its own copy (this test changes tags)
    store = Store(tmp_path / "data")
    caplog.set_level(logging.DEBUG)
    src = VCenterSource(vc_config(sim), owners=OwnersConfig(tag_cache_ttl=0))
    try:
        src.collect_inventory(store)
        want = _expected(sim)
        alice = next(n for n, w in want.items() if w["owner"] == "alice")
        alice_moref = next(v["moref"] for v in sim.manifest["vms"] if v["name"] == alice)
        unowned = {n for n, w in want.items() if w["owner_source"] == "unowned"}
        cluster = next(v["cluster"] for v in sim.manifest["vms"] if v["name"] == min(unowned))
        # an admin re-tags alice's VM to frank, and tags an unowned VM's cluster with team "platform"
        rest = _Rest(sim)
        cat_owner, cat_team = rest.find("category", "owner"), rest.find("category", "team")
        frank = rest.call("POST", "/rest/com/vmware/cis/tagging/tag",
                          {"create_spec": {"name": "frank", "category_id": cat_owner, "description": ""}})
        platform = rest.call("POST", "/rest/com/vmware/cis/tagging/tag",
                             {"create_spec": {"name": "platform", "category_id": cat_team, "description": ""}})
        old = rest.find("tag", "alice", cat_owner)
        obj = {"object_id": {"type": "VirtualMachine", "id": alice_moref}}
        rest.call("POST", f"/rest/com/vmware/cis/tagging/tag-association/id:{old}?~action=detach", obj)
        rest.call("POST", f"/rest/com/vmware/cis/tagging/tag-association/id:{frank}?~action=attach", obj)
        cl = next(m for m, (t, p) in src.inventory.model.objs.items()
                  if t == "ClusterComputeResource" and p.get("name") == cluster)
        rest.call("POST", f"/rest/com/vmware/cis/tagging/tag-association/id:{platform}?~action=attach",
                  {"object_id": {"type": "ClusterComputeResource", "id": cl}})

        res = src.collect_inventory(store)
    finally:
        src.close()
    in_cluster = {v["name"] for v in sim.manifest["vms"] if v["gpus"] and v["cluster"] == cluster}
    changed = {alice} | (unowned & in_cluster)
    assert res.rows["vm_owner"] == len(changed)  # only the VMs whose owner data changed
    hist = _rows(store, f"SELECT * FROM vm_owner WHERE vm_name = '{alice}' ORDER BY snapshot_ts")
    assert [h["owner"] for h in hist] == ["alice", "frank"] and hist[1]["team"] == "vision"
    latest = _by_name(store)
    assert latest[alice]["owner"] == "frank" and latest[alice]["owner_source"] == "tag"
    for n in unowned & in_cluster:  # inherited from the cluster: a team, still no owner
        assert (latest[n]["team"], latest[n]["owner"], latest[n]["owner_source"]) == ("platform", None, "cluster")
    for n in unowned - in_cluster:
        assert latest[n]["owner_source"] is None
    # the tagging session's credentials are never logged
    assert sim.password not in caplog.text
    assert base64.b64encode(f"{sim.user}:{sim.password}".encode()).decode() not in caplog.text
