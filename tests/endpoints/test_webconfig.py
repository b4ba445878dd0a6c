"""The web config file (Prometheus exporter-toolkit format, docs/web-configuration.md): the supported
subset is read as the toolkit means it; every other key is refused in one line naming file and key."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from accelmon.errors import UserError
from accelmon.webconfig import BasicAuth, WebConfigSource, load

from .helpers import basic, bcrypt_hash, self_signed, write_web_config


def test_full_supported_subset(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    ca, _ = self_signed(tmp_path, "clients")
    h = bcrypt_hash("pw")
    wc = write_web_config(tmp_path / "web.yml", {
        # relative names are relative to the web config's directory (toolkit: TLSConfig.SetDirectory)
        "tls_server_config": {"cert_file": cert.name, "key_file": str(key), "client_auth_type": "VerifyClientCertIfGiven",
                              "client_ca_file": ca.name, "min_version": "TLS13"},
        "http_server_config": {"http2": False, "headers": {"X-Frame-Options": "deny", "Content-Security-Policy": ""}},
        "basic_auth_users": {"prom": h},
    })
    cfg = load(wc)
    assert cfg.tls is not None and cfg.tls.cert_file == cert and cfg.tls.client_ca_file == ca
    assert cfg.tls.client_auth == ssl.CERT_OPTIONAL and cfg.tls.min_version == ssl.TLSVersion.TLSv1_3
    assert dict(cfg.headers) == {"X-Frame-Options": "deny"}  # a blank header is unset, as in the toolkit
    assert dict(cfg.users) == {"prom": h.encode()}
    ctx = cfg.tls.context(cfg.source)
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_3 and ctx.verify_mode == ssl.CERT_OPTIONAL


def test_empty_file_means_plain_http_without_auth(tmp_path: Path) -> None:
    cfg = load(write_web_config(tmp_path / "web.yml", {}))
    assert cfg.tls is None and not cfg.users and not cfg.headers


@pytest.mark.parametrize("doc, key", [
    ({"rate_limit": {"burst": 1}}, "rate_limit"),
    ({"tls_srever_config": {}}, "tls_srever_config"),
    ({"tls_server_config": {"cert_file": "c", "key_file": "k", "cipher_suites": ["TLS_AES_128_GCM_SHA256"]}},
     "tls_server_config.cipher_suites"),
    ({"tls_server_config": {"cert": "-----BEGIN", "key_file": "k"}}, "tls_server_config.cert"),
    ({"tls_server_config": {"cert_file": "c", "key_file": "k", "client_allowed_sans": ["x"]}},
     "tls_server_config.client_allowed_sans"),
    ({"tls_server_config": {"cert_file": "c", "key_file": "k", "client_auth_type": "RequireAnyClientCert"}},
     "tls_server_config.client_auth_type"),
    ({"tls_server_config": {"cert_file": "c", "key_file": "k", "client_auth_type": "Sometimes"}},
     "tls_server_config.client_auth_type"),
    ({"tls_server_config": {"cert_file": "c", "key_file": "k", "min_version": "TLS14"}}, "tls_server_config.min_version"),
    ({"tls_server_config": {"key_file": "k"}}, "tls_server_config.cert_file"),
    ({"tls_server_config": {"cert_file": "missing.crt", "key_file": "k"}}, "tls_server_config.cert_file"),
    ({"http_server_config": {"http2": True}}, "http_server_config.http2"),
    ({"http_server_config": {"headers": {"X-Powered-By": "me"}}}, "http_server_config.headers.X-Powered-By"),
    ({"http_server_config": {"headers": {"X-Frame-Options": "allow"}}}, "http_server_config.headers.X-Frame-Options"),
    ({"basic_auth_users": {"prom": "plaintext-password"}}, "basic_auth_users.prom"),
])
def test_unsupported_or_wrong_keys_are_one_line_naming_file_and_key(tmp_path: Path, doc: dict, key: str) -> None:
    cert, k = self_signed(tmp_path)
    for section in doc.values():  # real files where the test is not about them
        if isinstance(section, dict) and section.get("cert_file") == "c":
            section["cert_file"], section["key_file"] = str(cert), str(k)
        if isinstance(section, dict) and section.get("key_file") == "k":
            section["key_file"] = str(k)
    wc = write_web_config(tmp_path / "web.yml", doc)
    with pytest.raises(UserError) as ei:
        load(wc)
    msg = str(ei.value)
    assert msg.startswith(f"{wc}: {key}:") and "\n" not in msg
    assert "plaintext-password" not in msg  # a secret never goes into a message


def test_client_ca_needs_a_verifying_client_auth_type_and_back(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    for tls, what in (({"client_ca_file": str(cert)}, "NoClientCert"),
                      ({"client_auth_type": "RequireAndVerifyClientCert"}, "client_ca_file: required")):
        wc = write_web_config(tmp_path / "web.yml", {"tls_server_config": {"cert_file": str(cert), "key_file": str(key),
                                                                           **tls}})
        with pytest.raises(UserError, match=what):
            load(wc)


def test_bad_yaml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "web.yml"
    bad.write_text("basic_auth_users: {prom: [\n")
    with pytest.raises(UserError, match=r"web.yml: not valid YAML \(line"):
        load(bad)
    with pytest.raises(UserError, match="nope.yml: cannot read"):
        load(tmp_path / "nope.yml")


def test_basic_auth_checks_bcrypt_including_htpasswd_2y_hashes() -> None:
    users = {"prom": bcrypt_hash("right").encode(), "ops": bcrypt_hash("other", "$2y$").encode()}
    auth = BasicAuth()
    ok = lambda u, p: auth.check(users, basic(u, p)["Authorization"])  # noqa: E731
    assert ok("prom", "right") and ok("prom", "right")  # the second answer comes from the cache
    assert ok("ops", "other")
    assert not ok("prom", "wrong") and not ok("prom", "") and not ok("ops", "right")
    assert not ok("nobody", "right")  # an unknown user is checked against a dummy hash, and refused
    assert not auth.check(users, None) and not auth.check(users, "Bearer abc")
    assert not auth.check(users, "Basic !!!not-base64") and not auth.check(users, "Basic cHJvbQ==")  # "prom", no colon


def test_source_follows_the_file_and_keeps_the_last_good_one(tmp_path: Path) -> None:
    import os

    wc = write_web_config(tmp_path / "web.yml", {"basic_auth_users": {"prom": bcrypt_hash("one")}})
    src = WebConfigSource(wc)
    assert src.authorized(basic("prom", "one")["Authorization"])
    write_web_config(wc, {"basic_auth_users": {"prom": bcrypt_hash("two")}})
    os.utime(wc, (1, 1))  # a different mtime even within the same clock tick
    assert not src.authorized(basic("prom", "one")["Authorization"])
    assert src.authorized(basic("prom", "two")["Authorization"])
    wc.write_text("rate_limit: {burst: 1}\n")  # becomes invalid: the previous users stay in force
    os.utime(wc, (2, 2))
    assert src.authorized(basic("prom", "two")["Authorization"])
    assert not src.authorized(None)


def test_the_shipped_example_is_valid(tmp_path: Path) -> None:
    import yaml

    example = Path(__file__).resolve().parents[2] / "deploy" / "web-config.yml"
    doc = yaml.safe_load(example.read_text())
    cert, key = self_signed(tmp_path)  # the example's certificate paths exist only on a real host
    doc["tls_server_config"].update(cert_file=str(cert), key_file=str(key))
    cfg = load(write_web_config(tmp_path / "web.yml", doc))
    assert cfg.tls is not None and set(cfg.users) == {"prometheus"}


def test_config_keys(tmp_path: Path) -> None:
    from accelmon.config import ConfigError, parse

    wc = write_web_config(tmp_path / "web.yml", {})
    cfg = parse({"exporter": {"web_config_file": str(wc), "backlog": 256, "idle_timeout": "5s", "max_connections": 8},
                 "agent": {"web_config_file": str(wc)}}, "t.toml", env={})
    assert cfg.exporter.web_config_file == wc and cfg.exporter.backlog == 256 and cfg.exporter.idle_timeout == 5.0
    assert cfg.agent.web_config_file == wc and cfg.agent.backlog == 128 and cfg.agent.max_connections == 64
    cert, key = self_signed(tmp_path)
    for raw, line in (
        ({"exporter": {"web_config_file": str(tmp_path / "nope.yml")}}, "t.toml: exporter.web_config_file: file not found"),
        ({"agent": {"backlog": 0}}, "t.toml: agent.backlog:"),
        ({"exporter": {"idle_timeout": "soon"}}, "t.toml: exporter.idle_timeout:"),
        ({"agent": {"tls_cert": str(cert), "tls_key": str(key), "web_config_file": str(wc)}}, "t.toml: agent: give TLS"),
    ):
        with pytest.raises(ConfigError) as ei:
            parse(raw, "t.toml", env={})
        assert len(ei.value.lines) == 1 and ei.value.lines[0].startswith(line), ei.value.lines
