"""Abuse limits of a real gateway process: the body limit holds while reading, bad
JSON and bad context values are 400s (not 500/503), and refused tokens are audited
per source and interval with a count instead of one durable write each."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import httpx
import pytest
import yaml

from gateway_harness import POLICY, GatewayProcess, seed_duckdb
from oidc_issuer import OIDCIssuer

MB = 1 << 20


@pytest.fixture(scope="module")
def issuer() -> Iterator[OIDCIssuer]:
    with OIDCIssuer(audience="warden") as iss:
        yield iss


def _config(issuer: OIDCIssuer) -> dict[str, Any]:
    return {
        "gateway_id": "gw-limits",
        "mode": "shared",
        "policy": "policy.yaml",
        "state_dir": "state",
        "auth": {"mode": "oidc", "issuer": issuer.issuer, "audience": "warden", "attribute_claims": ["region"]},
    }


def _workdir(path: Path) -> Path:
    policy = json.loads(json.dumps(POLICY))
    del policy["connections"]["pg"]
    seed_duckdb(path / "data.duckdb")
    (path / "policy.yaml").write_text(yaml.safe_dump(policy))
    return path


@pytest.fixture(scope="module")
def gateway(issuer: OIDCIssuer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    gw = GatewayProcess(_workdir(tmp_path_factory.mktemp("limits")), dict(os.environ), _config(issuer)).start()
    yield gw
    gw.stop()


def auth(issuer: OIDCIssuer) -> dict[str, str]:
    return {"authorization": f"Bearer {issuer.issue(sub='ana', groups=['analysts'], region='emea')}", "content-type": "application/json"}


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def raw_request(gw: GatewayProcess, head: str, body_chunks: Iterator[bytes]) -> tuple[bytes, int]:
    """Send a request over a plain socket; return (response bytes, body bytes sent).
    Sending stops when the gateway has answered and closed."""
    sent = 0
    with socket.create_connection(("127.0.0.1", gw.port), timeout=30) as sock:
        sock.sendall(head.encode())
        try:
            for chunk in body_chunks:
                sock.sendall(chunk)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        response = b""
        try:
            while b"\r\n\r\n" not in response:
                data = sock.recv(65536)
                if not data:
                    break
                response += data
        except (ConnectionResetError, TimeoutError):
            pass
    return response, sent


def test_declared_oversized_body_is_refused_before_reading(gateway: GatewayProcess, issuer: OIDCIssuer) -> None:
    headers = auth(issuer)
    head = (
        f"POST /v1/cells HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {headers['authorization']}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {400 * MB}\r\n\r\n"
    )
    response, _ = raw_request(gateway, head, iter([b'{"connection": "dk", "sql": "']))
    assert response.startswith(b"HTTP/1.1 413"), response[:200]


def test_streamed_oversized_body_is_cut_off_while_reading(gateway: GatewayProcess, issuer: OIDCIssuer) -> None:
    pid = gateway.proc.pid if gateway.proc else 0
    # Warm up (first request allocations), then measure one 96 MB chunked body.
    assert httpx.post(gateway.url + "/v1/cells", json={"connection": "dk", "sql": "SELECT 1"}, headers=auth(issuer)).status_code in (200, 403)
    before = rss(pid)
    headers = auth(issuer)
    head = (
        f"POST /v1/cells HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {headers['authorization']}\r\n"
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    piece = b" " * (256 << 10)
    total = 96 * MB
    chunks = (f"{len(piece):x}\r\n".encode() + piece + b"\r\n" for _ in range(total // len(piece)))
    response, sent = raw_request(gateway, head, chunks)
    grown = rss(pid) - before
    assert response.startswith(b"HTTP/1.1 413") or sent < total, (response[:200], sent)
    assert grown < 24 * MB, f"the gateway grew by {grown / MB:.0f} MB for a refused body (limit 4 MB)"
    assert httpx.get(gateway.url + "/v1/health").status_code == 200


@pytest.mark.parametrize("path", ["/v1/cells", "/v1/events"])
@pytest.mark.parametrize("depth", [40, 200_000])
def test_deeply_nested_json_is_a_400(gateway: GatewayProcess, issuer: OIDCIssuer, path: str, depth: int) -> None:
    body = '{"connection": "dk", "sql": "SELECT 1", "type": "cell.execute", "context": {"x": ' + "[" * depth + "]" * depth + "}}"
    resp = httpx.post(gateway.url + path, content=body.encode(), headers=auth(issuer))
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["code"] == "bad-json" and "deeper than" in resp.json()["error"]["message"]


@pytest.mark.parametrize("count", ["7", -1, 2**70, True, 1.5, [1]])
def test_bad_execution_count_is_a_400(gateway: GatewayProcess, issuer: OIDCIssuer, count: Any) -> None:
    context = {"session_id": "s1", "execution_count": count}
    cell = httpx.post(gateway.url + "/v1/cells", json={"connection": "dk", "sql": "SELECT 1", "context": context}, headers=auth(issuer))
    single = httpx.post(gateway.url + "/v1/events", json={"type": "cell.execute", "context": context}, headers=auth(issuer))
    batch = httpx.post(gateway.url + "/v1/events", json={"events": [{"type": "cell.execute", "context": {}}, {"type": "cell.execute", "context": context}]}, headers=auth(issuer))
    for resp in (cell, single, batch):
        assert resp.status_code == 400, resp.text
        assert "execution_count" in resp.json()["error"]["message"]
    assert "events[1].context.execution_count" in batch.json()["error"]["message"]
    good = httpx.post(gateway.url + "/v1/events", json={"type": "cell.execute", "context": {**context, "execution_count": 7}}, headers=auth(issuer))
    assert good.status_code == 201, good.text


def test_junk_tokens_are_aggregated_per_source(issuer: OIDCIssuer, tmp_path: Path) -> None:
    gw = GatewayProcess(_workdir(tmp_path), dict(os.environ), _config(issuer)).start()
    try:
        body = {"connection": "dk", "sql": "SELECT 1"}
        with httpx.Client() as one, httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2")) as two:
            for i in range(60):
                assert one.post(gw.url + "/v1/cells", json=body, headers={"authorization": f"Bearer junk-{i}"}).status_code == 401
            for _ in range(5):
                assert two.post(gw.url + "/v1/cells", json=body, headers={"authorization": "Bearer x.y.z"}).status_code == 401
            assert one.post(gw.url + "/v1/cells", json=body).status_code == 401  # no token at all
        assert gw.stop() in (0, -15)
    finally:
        gw.kill()
    con = duckdb.connect(str(tmp_path / "state" / "audit.duckdb"), read_only=True)
    rows = con.execute("SELECT client_ip, rows, error FROM audit_events WHERE type = 'auth.failure' ORDER BY seq").fetchall()
    con.close()
    by_source: dict[str, list[int]] = {}
    for ip, n, _ in rows:
        by_source.setdefault(ip, []).append(n)
    # Per source: the first refusal at once, the rest of the interval as one counted record.
    assert by_source == {"127.0.0.1": [1, 60], "127.0.0.2": [1, 4]}, rows
    assert "60 more refused request(s) from 127.0.0.1" in rows[-1][2] or any("60 more" in r[2] for r in rows)


def test_event_flood_is_throttled_per_identity(issuer: OIDCIssuer, tmp_path: Path) -> None:
    # A low quota for the test: 20 events a minute. One identity's flood is refused (429)
    # and recorded once; another identity still gets through; the store stays small.
    cfg = _config(issuer) | {"limits": {"events_per_minute": 20, "event_bytes_per_minute": 1 << 20}}
    gw = GatewayProcess(_workdir(tmp_path), dict(os.environ), cfg).start()
    try:
        ana = auth(issuer)
        bob = {"authorization": f"Bearer {issuer.issue(sub='bob', groups=['analysts'], region='emea')}"}
        event = {"type": "cell.execute", "context": {"session_id": "flood"}, "status": "ok"}
        codes = [httpx.post(gw.url + "/v1/events", json=event, headers=ana).status_code for _ in range(40)]
        assert codes[:20] == [201] * 20 and set(codes[20:]) == {429}, codes
        refused = httpx.post(gw.url + "/v1/events", json={"events": [event] * 5}, headers=ana)
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "quota"
        other = {"type": "cell.execute", "context": {"session_id": "bob-1"}, "status": "ok"}
        assert httpx.post(gw.url + "/v1/events", json=other, headers=bob).status_code == 201
        assert gw.stop() in (0, -15)
    finally:
        gw.kill()
    con = duckdb.connect(str(tmp_path / "state" / "audit.duckdb"), read_only=True)
    kinds = dict(con.execute("SELECT type, count(*) FROM audit_events WHERE subject IN ('ana', 'bob') GROUP BY 1").fetchall())
    con.close()
    assert kinds.get("events.throttled") == 1, kinds
    assert kinds.get("cell.execute") == 21, kinds  # ana's 20 and bob's 1
