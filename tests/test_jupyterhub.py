"""warden on a real JupyterHub (issue 10): the Hub is started with `warden hub-config`'s
fragment and runs a real gateway as its managed service ``warden`` (auth.mode:
jupyterhub, plus the test OIDC issuer for service accounts); users' Hub tokens are the
only credentials the kernels' side ever holds. The external-service variant (a gateway
under its own OS user with a token file) runs in benchmarks/bench_hub.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml
from traitlets.config import Config

from gateway_harness import POLICY, seed_duckdb
from hub_harness import HubProcess, KernelSession, wait_for
from oidc_issuer import OIDCIssuer
from pgserver import free_port
from warden.gateway.auth import AuthError, fetch_client_credentials_token
from warden.gateway.client import GatewayClient, GatewayError, Held
from warden.gateway.config import ConfigError, config_from_mapping
from warden.hub.auth import HubAuthConfig, HubTokenVerifier
from warden.hub.config import HubConfigOptions, render

ACCESS = "access:services!service=warden"
GROUPS = {"analysts": ["alice"], "eng": ["bob"], "audit": ["carol"]}
EMAIL_SQL = "SELECT id, name, email FROM customers ORDER BY id"
HELD_SQL = "SELECT name FROM customers WHERE email = 'ada@analytical.example'"


@dataclass
class Deployment:
    hub: HubProcess
    gateway_url: str  # the gateway itself
    proxied_url: str  # the same through the Hub's proxy: what the kernels are given
    gateway_config: Path
    issuer: OIDCIssuer
    tokens: dict[str, str]  # user -> a Hub token with the warden scope

    def client(self, user_or_token: str) -> GatewayClient:
        return GatewayClient(self.gateway_url, token=self.tokens.get(user_or_token, user_or_token), timeout=30)


def hub_config_fragment(workdir: Path, gateway_url: str, gateway_config: Path, service_url: str) -> str:
    """What an admin runs: `warden hub-config ...` (the real command line)."""
    out = subprocess.run(
        [sys.executable, "-m", "warden.cli", "hub-config", "--gateway-url", gateway_url, "--service-url", service_url,
         "--gateway-config", str(gateway_config), "--kernelspec-prefix", str(workdir / "kernels")],
        check=True, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    return out.stdout


def _pids_running(marker: str) -> list[int]:
    """Our own processes whose command line holds ``marker`` (a unique temp path)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url + "/v1/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """The README's path: the Hub runs the gateway as its managed service `warden` (its
    own process and state) and hands it JUPYTERHUB_API_URL, _TOKEN and _SERVICE_NAME;
    the gateway's config names nothing of the Hub. The test OIDC issuer is there for
    service accounts."""
    root = tmp_path_factory.mktemp("hub")
    (root / "hub").mkdir()
    (root / "gw").mkdir()
    issuer = OIDCIssuer(audience="warden").start()
    issuer.register_client("etl-bot", "etl-secret", groups=["eng"])
    hub = HubProcess(root / "hub", fragment="", groups=GROUPS, port=free_port())
    gw_config = root / "gw" / "gateway.yaml"
    try:
        seed_duckdb(root / "gw" / "data.duckdb")
        policy = json.loads(json.dumps(POLICY))
        policy["connections"] = {"dk": policy["connections"]["dk"]}  # no PostgreSQL needed here
        (root / "gw" / "policy.yaml").write_text(yaml.safe_dump(policy))
        port = free_port()
        gw_config.write_text(yaml.safe_dump({
            "gateway_id": "gw-hub", "mode": "shared", "policy": "policy.yaml", "state_dir": "state",
            "listen": {"host": "127.0.0.1", "port": port},
            "auth": {"mode": "jupyterhub", "hub_cache_seconds": 2, "issuer": issuer.issuer, "audience": "warden",
                     "failure_window_seconds": 1},  # refusals reach the audit within a second
        }))  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        # Kernels go through the Hub's proxy (/services/warden/); the tests below also call
        # the gateway directly: both addresses work.
        proxied = f"{hub.url}/services/warden"
        hub.fragment = hub_config_fragment(root / "hub", proxied, gw_config, service_url=url)
        hub.start()
        wait_for(lambda: _healthy(url), timeout=45, what="the Hub-managed gateway", interval=0.2)
        tokens = {user: hub.new_token(user, [ACCESS])[0] for users in GROUPS.values() for user in users}
        yield Deployment(hub, url, proxied, gw_config, issuer, tokens)
    finally:
        hub.stop()  # the Hub stops its managed services
        for pid in _pids_running(str(gw_config)):  # only if the Hub failed to
            os.kill(pid, 9)
        issuer.stop()


# --------------------------------------------------------------------------------------


def test_hub_users_are_subjects_and_hub_groups_are_policy_groups(deployment: Deployment) -> None:
    for user, group, role in (("alice", "analysts", "analyst"), ("bob", "eng", "engineer"), ("carol", "audit", "auditor")):
        with deployment.client(user) as c:
            who = c.whoami()
        assert (who["subject"], who["kind"], who["groups"], who["roles"]) == (user, "human", [group], [role])


def test_the_gateway_answers_through_the_hub_proxy_too(deployment: Deployment) -> None:
    with GatewayClient(deployment.proxied_url, token=deployment.tokens["bob"], timeout=30) as c:
        assert c.whoami()["subject"] == "bob"
        result = c.run("dk", EMAIL_SQL)
    assert result.last is not None and result.last.rows == 3


def test_masks_differ_by_hub_group_and_the_audit_names_the_hub_user(deployment: Deployment) -> None:
    with deployment.client("alice") as a, deployment.client("bob") as b:
        ra, rb = a.run("dk", EMAIL_SQL), b.run("dk", EMAIL_SQL)
    assert ra.last is not None and rb.last is not None and ra.last.table is not None and rb.last.table is not None
    alice_emails = ra.last.table.column("email").to_pylist()
    bob_emails = rb.last.table.column("email").to_pylist()
    assert "ada@analytical.example" not in alice_emails + bob_emails
    assert alice_emails != bob_emails  # analysts: email mask; engineers: hash
    assert {m["column"] for m in ra.last.masks} == {"email"} == {m["column"] for m in rb.last.masks}
    with deployment.client("carol") as auditor:
        events = wait_for(lambda: [e for e in auditor.audit(type="query.executed,query.masked", limit="200")
                                   if e.get("sql") == EMAIL_SQL and e["subject"] in ("alice", "bob")],
                          timeout=10, what="query records")  # fmt: skip
    by_subject = {e["subject"]: e for e in events}
    assert set(by_subject) == {"alice", "bob"}
    assert list(by_subject["alice"]["groups"]) == ["analysts"]
    assert list(by_subject["bob"]["groups"]) == ["eng"]
    assert {e["auth_method"] for e in events} == {"hub-token"}


def test_a_token_of_alice_is_alice_whatever_the_request_claims(deployment: Deployment) -> None:
    forged = {"X-Forwarded-User": "bob", "X-Remote-User": "bob", "X-JupyterHub-User": "bob"}
    r = httpx.get(deployment.gateway_url + "/v1/whoami", headers={"Authorization": f"Bearer {deployment.tokens['alice']}", **forged}, timeout=10)
    assert r.status_code == 200 and r.json()["subject"] == "alice"
    # Alice's held request is hers alone: Bob sees neither the request nor her events.
    with deployment.client("alice") as a, pytest.raises(Held) as held:
        a.run("dk", HELD_SQL, context={"notebook_path": "alice.ipynb"})
    approval_id = held.value.approval["id"]
    with deployment.client("bob") as b:
        assert approval_id not in {x["id"] for x in b.approvals()}
        with pytest.raises(GatewayError):
            b.approval(approval_id)
        b.run("dk", EMAIL_SQL)  # Bob's own records exist whichever tests ran before this one
        mine = b._json("GET", "/v1/me/events", params={"limit": "500"})["events"]
    assert mine and {e["subject"] for e in mine} == {"bob"}
    with deployment.client("alice") as a:
        assert approval_id in {x["id"] for x in a.approvals()}


def test_tokens_without_the_warden_scope_or_of_a_service_are_refused_and_audited(deployment: Deployment) -> None:
    hub = deployment.hub
    no_scope, _ = hub.new_token("alice", ["read:users:name!user"])
    cases = {
        no_scope: "auth/insufficient-scope",
        hub.admin_token: "auth/invalid-credentials",  # a Hub service's token, not a user's
        "0" * 32: "auth/invalid-credentials",  # a token the Hub never issued
    }
    for token, code in cases.items():
        r = httpx.get(deployment.gateway_url + "/v1/whoami", headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert (r.status_code, r.json()["error"]["code"]) == (401, code), r.text
        assert token not in r.text
    with deployment.client("carol") as auditor:
        failures = wait_for(lambda: [e for e in auditor.audit(type="auth.failure", limit="100")
                                     if "insufficient-scope" in json.dumps(e)], timeout=10, what="auth.failure")  # fmt: skip
    assert failures and all(no_scope not in json.dumps(e) for e in failures)
    # Through the Hub's proxy the same rules hold: no token, no answer.
    r = httpx.get(deployment.proxied_url + "/v1/whoami", timeout=10)
    assert (r.status_code, r.json()["error"]["code"]) == (401, "auth/missing-token")


def test_a_revoked_hub_token_stops_working_within_the_cache_window(deployment: Deployment) -> None:
    token, token_id = deployment.hub.new_token("bob", [ACCESS])
    with deployment.client(token) as c:
        assert c.whoami()["subject"] == "bob"
        assert deployment.hub.api("DELETE", f"/users/bob/tokens/{token_id}").status_code == 204
        started = time.monotonic()

        def refused() -> bool:
            try:
                c.whoami()
            except GatewayError as exc:
                return "invalid-credentials" in str(exc.code) or "invalid-credentials" in str(exc)
            return False

        wait_for(refused, timeout=10, what="the revoked token to be refused")
    assert time.monotonic() - started <= 2 + 3  # hub_cache_seconds (2) plus a loaded machine's round trips


def test_a_change_of_hub_groups_reaches_the_policy_within_the_cache_window(deployment: Deployment) -> None:
    hub = deployment.hub
    assert hub.api("POST", "/users/dave").status_code == 201
    assert hub.api("POST", "/groups/analysts/users", json={"users": ["dave"]}).status_code == 200
    token, _ = hub.new_token("dave", [ACCESS])
    with deployment.client(token) as c:
        assert (c.whoami()["groups"], c.whoami()["roles"]) == (["analysts"], ["analyst"])
        assert hub.api("DELETE", "/groups/analysts/users", json={"users": ["dave"]}).status_code == 200
        assert hub.api("POST", "/groups/eng/users", json={"users": ["dave"]}).status_code == 200
        moved = wait_for(lambda: c.whoami()["roles"] == ["engineer"], timeout=10, what="dave's new group")
    assert moved


def test_the_cache_never_outlives_the_token(deployment: Deployment) -> None:
    hub = deployment.hub
    # A service token that may read token expiries (the test-admin service has `tokens`).
    verifier = HubTokenVerifier(HubAuthConfig(api_url=hub.api_url, service_token=hub.admin_token, cache_seconds=3600))
    try:
        before = time.time()
        token, _ = hub.new_token("alice", [ACCESS], expires_in=5)
        assert verifier.verify(token).subject == "alice"
        until = verifier.cached_until(token)
        assert until is not None and time.time() < until <= before + 5.5  # the token's expiry, not an hour
        calls = verifier.hub_calls
        assert verifier.verify(token).subject == "alice" and verifier.hub_calls == calls  # from the cache
        wait_for(lambda: time.time() > until, timeout=8, what="the token's expiry")
        with pytest.raises(AuthError) as info:
            verifier.verify(token)
        assert info.value.code == "invalid-credentials"
        # Without its own Hub token the gateway cannot read expiries, so it caches nothing.
        blind = HubTokenVerifier(HubAuthConfig(api_url=hub.api_url, cache_seconds=3600))
        blind.verify(deployment.tokens["alice"])
        assert blind.cached_until(deployment.tokens["alice"]) is None
        blind.close()
    finally:
        verifier.close()


def test_an_unreachable_hub_fails_closed() -> None:
    verifier = HubTokenVerifier(HubAuthConfig(api_url=f"http://127.0.0.1:{free_port()}/hub/api", http_timeout=2))
    try:
        with pytest.raises(AuthError) as info:
            verifier.verify("0123456789abcdef0123456789abcdef")
        assert info.value.code == "issuer-unavailable"
        assert verifier.cached_until("0123456789abcdef0123456789abcdef") is None
    finally:
        verifier.close()


def test_service_accounts_keep_working_through_oidc_beside_the_hub(deployment: Deployment) -> None:
    token = fetch_client_credentials_token(deployment.issuer.issuer, "etl-bot", "etl-secret", audience="warden")
    with deployment.client(token) as c:
        who = c.whoami()
    assert (who["subject"], who["kind"], who["groups"]) == ("etl-bot", "service", ["eng"])
    forged = deployment.issuer.stranger_key().sign({"alg": "RS256", "kid": "x"}, deployment.issuer.claims(sub="alice"))
    r = httpx.get(deployment.gateway_url + "/v1/whoami", headers={"Authorization": f"Bearer {forged}"}, timeout=10)
    assert r.status_code == 401


def test_the_hub_accepted_the_generated_fragment(deployment: Deployment) -> None:
    hub = deployment.hub
    service = hub.api("GET", "/services/warden")
    assert service.status_code == 200 and service.json()["name"] == "warden"
    assert "warden-gateway" in service.json()["roles"]
    # Users hold the warden scope through the 'user' role (else the Hub would refuse to
    # issue the tokens the fixture made); a scope users do not hold is refused.
    assert "user" in hub.api("GET", "/users/alice").json()["roles"]
    refused = hub.api("POST", "/users/alice/tokens", json={"scopes": ["access:services!service=test-admin"]})
    assert refused.status_code in (400, 403)  # JupyterHub: "not held by the user"
    spec = json.loads((hub.workdir / "kernels" / "share" / "jupyter" / "kernels" / "warden" / "kernel.json").read_text())
    assert spec["argv"][1:3] == ["-m", "warden.kernel"]
    # The same text loads into a bare traitlets Config, as documented.
    c = Config()
    exec(compile(hub.fragment, "warden_hub.py", "exec"), {"c": c})
    assert c.Spawner.server_token_scopes == ["users:activity!user", "access:servers!server", ACCESS]
    assert "WARDEN_GATEWAY_URL" in str(c.Spawner.environment)


def test_hub_config_refuses_bad_names() -> None:
    with pytest.raises(ValueError):
        HubConfigOptions(service_name="war den")
    text = render(HubConfigOptions(gateway_config="/etc/warden/gateway.yaml", gateway_user="warden", python="/opt/hub/bin/python"))
    c = Config()
    exec(compile(text, "managed.py", "exec"), {"c": c})
    (service,) = c.JupyterHub.services.to_dict()["extend"]
    assert service == {"name": "warden", "display": False, "user": "warden",
                       "command": ["/opt/hub/bin/python", "-m", "warden.cli", "gateway", "--config", "/etc/warden/gateway.yaml"]}  # fmt: skip
    assert "api_token" not in text  # a managed service gets its token from the Hub


@pytest.mark.parametrize(
    ("auth", "mode", "message"),
    [
        ({"mode": "jupyterhub"}, "shared", "hub_api_url"),
        ({"mode": "jupyterhub", "hub_api_url": "http://127.0.0.1:8081/hub/api"}, "local", "mode: shared"),
        ({"mode": "jupyterhub", "hub_api_url": "http://127.0.0.1:8081/hub/api", "issuer": "https://idp"}, "shared", "audience"),
        ({"mode": "jupyterhub", "hub_url": "x"}, "shared", "unknown setting 'auth.hub_url'"),
    ],
)
def test_gateway_config_for_jupyterhub_is_validated(
    auth: dict[str, str], mode: str, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("JUPYTERHUB_API_URL", raising=False)
    with pytest.raises(ConfigError, match=message):
        config_from_mapping({"mode": mode, "policy": "p.yaml", "auth": auth}, base=tmp_path)


def test_gateway_config_reads_the_hub_environment_of_a_managed_service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JUPYTERHUB_API_URL", "http://127.0.0.1:8081/hub/api")
    monkeypatch.setenv("JUPYTERHUB_SERVICE_NAME", "sql-gateway")
    cfg = config_from_mapping({"policy": "p.yaml", "auth": {"mode": "jupyterhub"}}, base=tmp_path)
    assert (cfg.auth.hub_api_url, cfg.auth.hub_service_name, cfg.auth.hub_token_env) == (
        "http://127.0.0.1:8081/hub/api", "sql-gateway", "JUPYTERHUB_API_TOKEN")
    assert HubAuthConfig(api_url=cfg.auth.hub_api_url, service_name="sql-gateway").accepted_scopes == {
        "access:services", "access:services!service=sql-gateway"}


def _server_env(hub: HubProcess, user: str) -> dict[str, str]:
    state = hub.api("GET", f"/users/{user}").json()["servers"][""]["state"]
    environ = Path(f"/proc/{state['pid']}/environ").read_bytes().decode(errors="replace").split("\0")
    return dict(item.partition("=")[::2] for item in environ if item)


def test_sql_cells_in_the_warden_kernel_of_each_users_server(deployment: Deployment) -> None:
    """The whole path: Hub -> single-user server -> warden kernel -> gateway, per user."""
    hub = deployment.hub
    sessions: dict[str, KernelSession] = {}
    try:
        with ThreadPoolExecutor(2) as pool:  # both servers spawn at once
            list(pool.map(hub.start_server, ("alice", "bob")))
        for user in ("alice", "bob"):
            token, _ = hub.new_token(user, ["access:servers!user"])
            specs = httpx.get(f"{hub.url}/user/{user}/api/kernelspecs", headers={"Authorization": f"token {token}"}, timeout=30)
            assert specs.status_code == 200, specs.text
            # Only the warden kernel is offered (no plain python3), and it is the default.
            assert (set(specs.json()["kernelspecs"]), specs.json()["default"]) == ({"warden"}, "warden")
            sessions[user] = KernelSession(hub, user, token)  # the default kernel
            assert sessions[user].model["name"] == "warden"
        emails: dict[str, list[str]] = {}
        for user, kernel in sessions.items():
            ran = kernel.execute(f"%%sql dk df <<\n{EMAIL_SQL}")
            assert ran["error"] is None, ran
            shown = kernel.execute("import json; print(json.dumps(df['email'].tolist()))")
            assert shown["error"] is None, shown
            emails[user] = json.loads(shown["stdout"].strip().splitlines()[-1])
        assert "ada@analytical.example" not in emails["alice"] + emails["bob"]
        assert emails["alice"] != emails["bob"]  # analysts and engineers have different masks
        with deployment.client("carol") as auditor:
            kernel_events = wait_for(lambda: {e["subject"]: e for e in auditor.audit(type="query.executed", limit="500")
                                              if (e.get("sql") or "").strip() == EMAIL_SQL and e.get("kernel_id")},
                                     timeout=10, what="the kernels' query records")  # fmt: skip
        assert set(kernel_events) >= {"alice", "bob"}
        assert list(kernel_events["alice"]["groups"]) == ["analysts"] and list(kernel_events["bob"]["groups"]) == ["eng"]
        assert {sessions["alice"].model["id"], sessions["bob"].model["id"]} == {kernel_events[u]["kernel_id"] for u in ("alice", "bob")}

        # The servers' environments: the gateway's URL and the server's own Hub token;
        # no database credential, no gateway secret.
        alice_env = _server_env(hub, "alice")
        assert alice_env["WARDEN_GATEWAY_URL"] == deployment.proxied_url
        assert [k for k in alice_env if "DSN" in k or k in ("WARDEN_TOKEN", "WARDEN_CLIENT_SECRET", "PGPASSWORD")] == []
        (gateway_pid,) = _pids_running(str(deployment.gateway_config))
        gateway_env = Path(f"/proc/{gateway_pid}/environ").read_bytes().split(b"\0")
        (gateway_token,) = [e.split(b"=", 1)[1].decode() for e in gateway_env if e.startswith(b"JUPYTERHUB_API_TOKEN=")]
        assert gateway_token and gateway_token not in json.dumps(alice_env)  # the gateway's Hub token stays with it
        # Its token carries the warden scope (Spawner.server_token_scopes) ...
        server_tokens = [t for t in hub.api("GET", "/users/alice/tokens").json()["api_tokens"] if "Server at" in (t.get("note") or "")]
        assert server_tokens and ACCESS in server_tokens[0]["scopes"]
        # ... and is Alice's only: the gateway sees Alice, and Bob's server refuses it.
        alice_server_token = alice_env["JUPYTERHUB_API_TOKEN"]
        with deployment.client(alice_server_token) as c:
            assert c.whoami()["subject"] == "alice"
        r = httpx.get(f"{hub.url}/user/bob/api/kernels", headers={"Authorization": f"token {alice_server_token}"}, timeout=30)
        assert r.status_code == 403
    finally:
        for kernel in sessions.values():
            kernel.close()
        for user in ("alice", "bob"):
            hub.api("DELETE", f"/users/{user}/server")

