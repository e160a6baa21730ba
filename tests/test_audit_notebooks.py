"""The auditor notebooks (notebooks/audit/) run under nbclient with the warden kernel,
as an auditor, against a log seeded by a real gateway process; and ``%warden audit``
shows an analyst's session as a table (real kernel through nbclient)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from audit_seed import SESSION, SeededLog, seed, start_gateway
from oidc_issuer import OIDCIssuer
from warden.audit import derive_signing_key, public_key_pem

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks" / "audit").glob("*.ipynb"))


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeededLog]:
    with OIDCIssuer(audience="warden") as issuer:
        gw = start_gateway(tmp_path_factory.mktemp("auditnb"), issuer)
        try:
            yield seed(gw, issuer)
        finally:
            gw.stop()


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    from warden.kernel.install import install_kernelspec

    prefix = tmp_path_factory.mktemp("kspec")
    install_kernelspec(prefix=str(prefix))
    saved = dict(os.environ)
    os.environ["JUPYTER_PATH"] = str(prefix / "share" / "jupyter")
    os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    try:
        yield prefix
    finally:
        os.environ.clear()
        os.environ.update(saved)


def run_notebook(nb: nbformat.NotebookNode, seeded: SeededLog, token: str, workdir: Path, **env: str) -> nbformat.NotebookNode:
    for key in [k for k in os.environ if k.startswith("WARDEN_")]:
        del os.environ[key]
    os.environ.update(WARDEN_GATEWAY_URL=seeded.gateway.url, WARDEN_TOKEN=token, **env)
    try:
        NotebookClient(nb, kernel_name="warden", timeout=120, startup_timeout=60, resources={"metadata": {"path": str(workdir)}}).execute()
    finally:
        for key in ("WARDEN_GATEWAY_URL", "WARDEN_TOKEN", *env):
            os.environ.pop(key, None)
    return nb


def outputs_of(nb: nbformat.NotebookNode) -> list[dict[str, object]]:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]


def test_every_auditor_notebook_is_tested() -> None:
    assert [p.name for p in NOTEBOOKS] == [
        "01_classified_access.ipynb", "02_approvals.ipynb", "03_denied_and_failed.ipynb", "04_verify_chain.ipynb", "05_session_replay.ipynb",
    ]  # fmt: skip
    for path in NOTEBOOKS:  # shipped without outputs
        assert not outputs_of(nbformat.read(str(path), as_version=4)), path.name


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_auditor_notebook_runs(path: Path, seeded: SeededLog, kernel_env: Path, tmp_path: Path) -> None:
    # The key the auditor holds, derived from the gateway's secret as `warden audit public-key` does.
    key = tmp_path / "audit.pub"
    key.write_text(public_key_pem(derive_signing_key((seeded.gateway.workdir / "state" / "secret.key").read_bytes())))
    env = {"AUDIT_SESSION": SESSION, "AUDIT_PUBLIC_KEY_FILE": str(key)}
    nb = run_notebook(nbformat.read(str(path), as_version=4), seeded, seeded.auditor_token(), tmp_path, **env)
    outs = outputs_of(nb)
    errors = [o for o in outs if o["output_type"] == "error"]
    assert not errors, errors
    text = json.dumps(outs)
    if path.stem.startswith("01"):
        assert "image/png" in text  # the plot by day and classification
        assert "pii.email" in text and "main.customers.email" in text and "ana" in text
    elif path.stem.startswith("02"):
        assert "olga" in text and "granted" in text and "rejected" in text and "no WHERE clause" in text
    elif path.stem.startswith("03"):
        assert "image/png" in text and "statements" in text and "Conversion Error" in text
    elif path.stem.startswith("04"):
        assert "chain verification: OK" in text and "verified" in text and "signatures checked with key" in text
    else:
        replay = tmp_path / f"replay-{SESSION}.ipynb"
        assert replay.exists()
        rebuilt = nbformat.read(str(replay), as_version=4)
        assert rebuilt.metadata["warden"]["replay"] is True and len([c for c in rebuilt.cells if c.cell_type == "code"]) == 6
        assert "warden replay" in text and "pii.email" in text


def test_analysts_cannot_run_the_auditor_notebooks(seeded: SeededLog, kernel_env: Path, tmp_path: Path) -> None:
    nb = nbformat.read(str(NOTEBOOKS[0]), as_version=4)
    with pytest.raises(Exception, match=r"not-auditor|auditors"):
        run_notebook(nb, seeded, seeded.token("ana", ["analysts"], region="emea"), tmp_path)


def test_warden_audit_magic_shows_a_table(seeded: SeededLog, kernel_env: Path, tmp_path: Path) -> None:
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("%%sql dk\nSELECT id, amount FROM orders WHERE id < 3"),
        nbformat.v4.new_code_cell("%warden audit"),
    ], metadata={"kernelspec": {"name": "warden", "display_name": "warden", "language": "python"}})  # fmt: skip
    run_notebook(nb, seeded, seeded.token("ana", ["analysts"], region="emea"), tmp_path)
    [out] = [o for o in nb.cells[1].outputs if o["output_type"] in ("execute_result", "display_data")]
    html, plain = out["data"]["text/html"], out["data"]["text/plain"]
    for header in ("time (UTC)", "cell", "type", "connection", "action", "rows", "sql"):
        assert f">{header}</th>" in html
    assert "text-align:left" in html or "left" in html
    assert "SELECT id, amount FROM orders WHERE id &lt; 3" in html or "SELECT id, amount FROM orders WHERE id < 3" in plain
    line = next(ln for ln in plain.splitlines() if "query.executed" in ln)
    assert " dk " in f" {line} " and "[1]" in line and " 1 " in f" {line} "  # row filter region=emea: id 1 only
