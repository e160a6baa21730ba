"""Sealed export segments and the ``warden audit`` commands."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from test_audit_support import BACKENDS, SECRET, StoreEnv, draft, make_env
from warden.audit import AuditError, derive_signing_key, export, public_key_pem, verify
from warden.audit.checkpoint import key_id
from warden.audit.cli import main

PUBLIC = public_key_pem(derive_signing_key(SECRET))


@pytest.fixture(params=BACKENDS)
def env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreEnv]:
    e = make_env(request.param, request, tmp_path)
    store = e.open(signing_key=SECRET, checkpoint_every=10, checkpoint_file=tmp_path / "cps.jsonl")
    for i in range(30):
        store.append([draft(i)])
    store.close()
    yield e
    e.close_all()


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "audit.pub"
    path.write_text(PUBLIC)
    return path


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_export_segments_verify(env: StoreEnv, fmt: str) -> None:
    out = env.tmp_path / "out"
    segments = export(env.url, out, fmt, segment_size=10, signing_key=SECRET)  # type: ignore[arg-type]
    assert [(s.first_seq, s.last_seq, s.count, s.signed) for s in segments] == [(1, 10, 10, True), (11, 20, 10, True), (21, 30, 10, True)]
    manifest = json.loads(segments[1].manifest_path.read_text())
    assert manifest["chain_id"] == "gw-test" and manifest["first_seq"] == 11 and manifest["data_format"] == fmt
    report = verify(out, public_key=PUBLIC, checkpoints=env.tmp_path / "cps.jsonl")
    assert report.ok, report.format()
    assert report.records == 30 and report.checkpoints_checked == 4, "10, 20, 30 and the close at 30"


def test_export_since_starts_mid_chain(env: StoreEnv) -> None:
    with_times = verify(env.url)
    assert with_times.ok
    from warden.audit import open_store

    with open_store(env.url, read_only=True) as ro:
        t11 = next(iter(ro.read_chain("gw-test", start_seq=11, end_seq=11))).event_time
    segments = export(env.url, env.tmp_path / "out", "jsonl", since=t11, signing_key=SECRET)
    assert [(s.first_seq, s.last_seq) for s in segments] == [(11, 30)]
    assert verify(env.tmp_path / "out", public_key=PUBLIC).ok


def test_tampered_parquet_segment_fails(env: StoreEnv) -> None:
    out = env.tmp_path / "out"
    segments = export(env.url, out, "parquet", segment_size=10, signing_key=SECRET)
    path = segments[1].data_path
    table = pq.read_table(path)
    subjects = table.column("subject").to_pylist()
    subjects[3] = "mallory"  # seq 14
    pq.write_table(table.set_column(table.schema.get_field_index("subject"), "subject", pa.array(subjects)), path)
    report = verify(out, public_key=PUBLIC)
    assert not report.ok
    assert report.find("segment_modified", 14)
    assert report.find("edited", 14), report.format()


def test_tampered_jsonl_segment_and_manifest(env: StoreEnv) -> None:
    out = env.tmp_path / "out"
    segments = export(env.url, out, "jsonl", segment_size=10, signing_key=SECRET)
    lines = segments[0].data_path.read_text().splitlines()
    del lines[4]  # seq 5
    segments[0].data_path.write_text("\n".join(lines) + "\n")
    manifest = json.loads(segments[2].manifest_path.read_text())
    manifest["last_seq"] = 29
    segments[2].manifest_path.write_text(json.dumps(manifest))
    report = verify(out, public_key=PUBLIC)
    assert report.find("deleted", 5), report.format()
    assert report.find("bad_signature", 21), report.format()


def test_missing_segment_is_a_gap(env: StoreEnv) -> None:
    out = env.tmp_path / "out"
    segments = export(env.url, out, "parquet", segment_size=10, signing_key=SECRET)
    segments[1].data_path.unlink()
    segments[1].manifest_path.unlink()
    report = verify(out, public_key=PUBLIC)
    assert [(i.kind, i.seq, i.seq_end) for i in report.issues] == [("deleted", 11, 20)], report.format()


def test_unsigned_segments(env: StoreEnv) -> None:
    out = env.tmp_path / "out"
    from warden.audit import open_store

    with open_store(env.url, read_only=True) as ro:  # a read-only store has no key
        segments = export(ro, out, "jsonl")
    assert [s.signed for s in segments] == [False]
    report = verify(out)
    assert report.ok and any("not signed" in w for w in report.warnings)
    assert verify(out, public_key=PUBLIC).find("bad_signature")


def test_export_refuses_a_broken_chain(env: StoreEnv) -> None:
    env.sql("UPDATE audit_events SET subject = 'mallory' WHERE seq = 3")
    with pytest.raises(AuditError, match="seq 3"):
        export(env.url, env.tmp_path / "out", "parquet")


# --------------------------------------------------------------------------- CLI


def test_cli_verify_exit_codes(env: StoreEnv, key_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cps = str(env.tmp_path / "cps.jsonl")
    assert main(["audit", "verify", "--store", env.url, "--public-key", str(key_file), "--checkpoints", cps]) == 0
    assert "OK" in capsys.readouterr().out
    env.sql("DELETE FROM audit_events WHERE seq = 4")
    assert main(["audit", "verify", "--store", env.url, "--public-key", str(key_file), "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] is False and data["issues"][0]["kind"] == "deleted" and data["issues"][0]["seq"] == 4


def test_cli_export_then_verify(env: StoreEnv, key_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    secret = env.tmp_path / "secret"
    secret.write_bytes(SECRET)
    out = env.tmp_path / "out"
    code = main(["audit", "export", "--store", env.url, "--format", "jsonl", "--since", "2000-01-01", "--out", str(out), "--signing-key", str(secret)])
    assert code == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[0]["records"] == 30 and lines[0]["signed"] is True
    assert main(["audit", "verify", "--store", str(out), "--public-key", str(key_file)]) == 0


def test_cli_public_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    secret = tmp_path / "secret"
    # A secret file is read byte for byte, as the gateway reads its secret_file.
    secret.write_bytes(SECRET)
    assert main(["audit", "public-key", "--signing-key", str(secret)]) == 0
    out = capsys.readouterr()
    assert out.out == PUBLIC
    assert f"key id {key_id(derive_signing_key(SECRET))}" in out.err
    assert main(["audit", "public-key", "--signing-key", str(tmp_path / "missing")]) == 2


def test_cli_bad_input(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("WARDEN_AUDIT_STORE", raising=False)
    assert main(["audit", "verify"]) == 2
    assert "--store" in capsys.readouterr().err
    assert main(["audit", "verify", "--store", f"duckdb://{tmp_path / 'none.duckdb'}"]) == 2
    assert main(["audit", "verify", "--store", "mysql://x", "--public-key", str(tmp_path / "missing.pem")]) == 2
    assert main(["audit", "export", "--store", f"duckdb://{tmp_path / 'x.duckdb'}", "--since", "yesterday", "--out", str(tmp_path)]) == 2
    assert main(["audit", "export", "--format", "csv", "--out", str(tmp_path)]) == 2
    assert main(["audit"]) == 2
