"""vSphere tags through vCenter's tagging REST API (vSphere Automation API), read in bulk.

Session: ``POST /api/session`` (vSphere 7.0 U2+) or ``POST /rest/com/vmware/cis/session``, HTTP
basic auth with the vCenter source's own user and password; the answer is the session id, sent
afterwards in the ``vmware-api-session-id`` header.  "/api" is tried first; a 404 there means an
older vCenter (or vcsim 0.24, which serves only "/rest") and every call then uses "/rest"
(answers wrapped in ``{"value": ...}``, ids in the path as ``id:<id>``, actions as ``~action=``).

Per inventory cycle one call reads every association of the tags that matter:
``tag-association?action=list-attached-objects-on-tags`` with the ids of all tags in the configured
categories (the documented bulk read: "Fetches the list of attached objects for the given tag
identifiers", vSphere Automation API, ``com.vmware.cis.tagging.TagAssociation``).  Category and
tag names change rarely: they are read once and again after ``ttl`` seconds.  Never per VM.

Credentials go only into the ``Authorization`` header of the session request; nothing here logs
or raises them (errors name the vCenter and the API path).
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from accelmon.collector.vcenter.session import VCenterError, VCenterSession

log = logging.getLogger(__name__)

HEADER = "vmware-api-session-id"


@dataclass
class TagCatalog:
    """What the configured categories hold: tag id → (category name, tag name)."""

    tags: dict[str, tuple[str, str]] = field(default_factory=dict)
    read_at: float = 0.0


class TaggingClient:
    """A tagging-API client for one vCenter, riding on its :class:`VCenterSession`."""

    def __init__(self, session: VCenterSession, categories: Iterable[str], ttl: float = 300.0) -> None:
        self.session = session
        self.categories = sorted(set(categories))
        self.ttl = ttl
        self.flavour: str | None = None  # "api" | "rest", decided at the first login
        self._sid: str | None = None
        self._conn: http.client.HTTPConnection | None = None
        self.catalog = TagCatalog()
        self.calls = 0  # HTTP requests sent (bench, tests: bulk means few)

    # ------------------------------------------------------------------ HTTP
    def _request(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
                 ) -> tuple[int, Any]:
        h = {"Accept": "application/json", **(headers or {})}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            h["Content-Type"] = "application/json"
        for attempt in (0, 1):
            conn = self._conn or self.session._new_http()
            self._conn = conn
            try:
                conn.request(method, path, body=data, headers=h)
                resp = conn.getresponse()
                raw = resp.read()
                self.calls += 1
                break
            except (OSError, http.client.HTTPException) as e:
                conn.close()
                self._conn = None
                if attempt:
                    raise VCenterError(self.session.target, f"tagging API {path.split('?')[0]}: {type(e).__name__}") \
                        from None
        try:
            val = json.loads(raw) if raw else None
        except ValueError:
            val = None
        return resp.status, val

    def _login(self) -> None:
        cfg = self.session.cfg
        token = base64.b64encode(f"{cfg.user}:{cfg.secret()}".encode()).decode()
        auth = {"Authorization": f"Basic {token}"}
        order = [self.flavour] if self.flavour else ["api", "rest"]
        for flav in order:
            path = "/api/session" if flav == "api" else "/rest/com/vmware/cis/session"
            status, val = self._request("POST", path, headers=auth)
            if status == 404 and flav == "api" and len(order) > 1:
                continue
            if status in (200, 201):
                sid = val.get("value") if isinstance(val, dict) else val
                if not isinstance(sid, str) or not sid:
                    raise VCenterError(self.session.target, f"tagging API {path}: no session id in the answer")
                self._sid, self.flavour = sid, flav
                return
            raise VCenterError(self.session.target, f"tagging API {path}: HTTP {status} (session refused)")
        raise VCenterError(self.session.target, "tagging API: neither /api nor /rest is served")

    def _call(self, method: str, api_path: str, rest_path: str, body: Any = None) -> Any:
        """One authenticated call; re-logs in once on 401 (session expired)."""
        for attempt in (0, 1):
            if self._sid is None:
                self._login()
            path = api_path if self.flavour == "api" else rest_path
            status, val = self._request(method, path, body, {HEADER: self._sid or ""})
            if status == 401 and not attempt:
                self._sid = None
                continue
            if status not in (200, 201, 204):
                raise VCenterError(self.session.target, f"tagging API {path.split('?')[0]}: HTTP {status}")
            if self.flavour == "rest" and isinstance(val, dict) and "value" in val:
                return val["value"]
            return val
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------ reads
    def _refresh_catalog(self) -> None:
        wanted = set(self.categories)
        cats: dict[str, str] = {}
        for cid in self._call("GET", "/api/cis/tagging/category", "/rest/com/vmware/cis/tagging/category") or []:
            c = self._call("GET", f"/api/cis/tagging/category/{quote(cid, safe=':')}",
                           f"/rest/com/vmware/cis/tagging/category/id:{quote(cid, safe=':')}") or {}
            if c.get("name") in wanted:
                cats[cid] = c["name"]
        tags: dict[str, tuple[str, str]] = {}
        for cid, cname in cats.items():
            ids = self._call("POST", "/api/cis/tagging/tag?action=list-tags-for-category",
                             f"/rest/com/vmware/cis/tagging/tag/id:{quote(cid, safe=':')}?~action=list-tags-for-category",
                             {"category_id": cid}) or []
            for tid in ids:
                t = self._call("GET", f"/api/cis/tagging/tag/{quote(tid, safe=':')}",
                               f"/rest/com/vmware/cis/tagging/tag/id:{quote(tid, safe=':')}") or {}
                if t.get("name"):
                    tags[tid] = (cname, t["name"])
        self.catalog = TagCatalog(tags, time.monotonic())

    def attached(self) -> dict[tuple[str, str], dict[str, list[str]]]:
        """(object type, moref) → category name → tag names (sorted), for the configured categories.

        Category/tag names from the cache (re-read after ``ttl``); associations read now, in one call."""
        if not self.catalog.read_at or time.monotonic() - self.catalog.read_at >= self.ttl:
            self._refresh_catalog()
        ids = sorted(self.catalog.tags)
        if not ids:
            return {}
        res = self._call("POST", "/api/cis/tagging/tag-association?action=list-attached-objects-on-tags",
                         "/rest/com/vmware/cis/tagging/tag-association?~action=list-attached-objects-on-tags",
                         {"tag_ids": ids}) or []
        out: dict[tuple[str, str], dict[str, list[str]]] = {}
        for entry in res:
            ct = self.catalog.tags.get(entry.get("tag_id", ""))
            if ct is None:
                continue
            for obj in entry.get("object_ids") or []:
                key = (str(obj.get("type")), str(obj.get("id")))
                names = out.setdefault(key, {}).setdefault(ct[0], [])
                if ct[1] not in names:
                    names.append(ct[1])
        for d in out.values():
            for names in d.values():
                names.sort()
        return out

    def close(self) -> None:
        if self._sid is not None:
            try:
                self._call("DELETE", "/api/session", "/rest/com/vmware/cis/session")
            except Exception as e:  # noqa: BLE001 - best effort on the way out
                log.debug("vCenter %s: tagging logout: %s", self.session.target, e)
            self._sid = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None


__all__ = ["TagCatalog", "TaggingClient"]
