"""Policy validation: malformed files give line-numbered errors; the docs list every setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine_fixtures import FIXTURES
from warden.errors import PolicyError
from warden.policy.model import SETTINGS, load_policy, parse_policy

ROOT = Path(__file__).parent.parent

GOOD = """\
version: 1
connections:
  wh: {dialect: postgres, dsn_env: WH_DSN}
classifications:
  pii.email: ["wh.public.customers.email"]
roles:
  analyst:
    members: {groups: [analysts]}
    statements: [select]
    masks: {pii.email: email}
"""


def test_good_policy_loads() -> None:
    policy = parse_policy(GOOD)
    assert [r.name for r in policy.roles] == ["analyst"]
    assert policy.classify("wh.public.customers.email") == {"pii.email"}
    assert policy.classify("wh.public.customers.name") == frozenset()


BAD = [
    # (replace this, with this, expected line, message fragment)
    ("masks: {pii.email: email}", "masks: {pii.emial: email}", 10, "unknown classification 'pii.emial'"),
    ("masks: {pii.email: email}", "masks: {pii.email: lastfour}", 10, "pii.email"),
    ("statements: [select]", "statements: [selectt]", 9, "unknown statement kind 'selectt'"),
    ("dialect: postgres, dsn_env: WH_DSN", "dialect: oracle, dsn_env: WH_DSN", 3, "dialect must be one of"),
    ("dialect: postgres, dsn_env: WH_DSN", "dialect: postgres", 3, "needs dsn_env or dsn_file"),
    ('["wh.public.customers.email"]', '["customers.email"]', 5, "connection.schema.table.column"),
    ("    statements: [select]\n", "    statements: [select]\n    hold: [\"kind == drop and __import__('os')\"]\n", 10, "Call"),
    ("    statements: [select]\n", "    statements: [select]\n    hold: [\"rows > 5\"]\n", 10, "names 'rows'"),
    ("    statements: [select]\n", "    statements: [select]\n    classified_in_predicates: maybe\n", 10, "must be one of deny, hold, allow"),
    ("    statements: [select]\n", "    statements: [select]\n    statments: [select]\n", 10, "unknown setting 'statments'"),
    ("version: 1", "version: 2", 1, "unsupported policy version"),
    ("  analyst:\n", "  analyst:\n    members: {groups: [a]}\n", 9, "duplicate key 'members'"),
    ("masks: {pii.email: email}", "masks: {pii.email: email", 11, "not valid YAML"),
]


@pytest.mark.parametrize(("old", "new", "line", "fragment"), BAD, ids=[b[3] for b in BAD])
def test_bad_policy_names_line(old: str, new: str, line: int, fragment: str) -> None:
    assert old in GOOD
    with pytest.raises(PolicyError) as info:
        parse_policy(GOOD.replace(old, new, 1), source="p.yaml")
    err = info.value
    assert fragment in str(err)
    assert err.line == line, str(err)
    assert str(err).startswith(f"p.yaml:{line}: ")


def test_empty_policy() -> None:
    with pytest.raises(PolicyError, match="empty"):
        parse_policy("")


def test_missing_file_is_a_policy_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read policy"):
        load_policy(tmp_path / "nope.yaml")


def test_shipped_policies_are_valid() -> None:
    for path in [
        ROOT / "notebooks" / "policy.example.yaml",
        ROOT / "kernel" / "warden" / "demo" / "policy.yaml",
        FIXTURES / "policy.yaml",
    ]:
        assert load_policy(path).roles


def test_every_setting_is_documented() -> None:
    doc = (ROOT / "docs" / "policy.md").read_text()
    missing = [key for keys in SETTINGS.values() for key in keys if f"`{key}`" not in doc]
    assert not missing, f"undocumented policy settings: {missing}"
