"""Reusing a decision for a cell that differs from an earlier one only in literal values.

A dashboard or a loop sends the same statement shape again and again with other
values (``WHERE id = 17``, then ``= 18``). The analysis is cached by shape already
(``CellAnalysis.reuse_key``); the decision depends on the analysis's structure, the
identity (roles by subject and groups, row filters by attributes), the connection and
the taints, never on a plain literal's value, except for the redacted SQL the audit
record carries, which is computed again for every cell. So a decision is reused only
when all of these are equal, and only for analyses without any unresolved part (a
deny is recomputed each time, with its positions in this cell's text).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import replace

from warden.policy.engine import Classifier, Decision, Identity, decide, redact_sql
from warden.policy.model import Policy
from warden.sql.model import CellAnalysis

__all__ = ["DecisionCache"]


class DecisionCache:
    """A small thread-safe LRU of decisions for one policy object."""

    def __init__(self, policy: Policy, size: int = 2048) -> None:
        self._policy = policy
        self._size = size
        self._entries: OrderedDict[tuple[object, ...], Decision] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def decide(
        self, identity: Identity, analysis: CellAnalysis, connection: str, *, taints: Mapping[str, frozenset[str]] | None = None
    ) -> Decision:
        policy = self._policy
        if analysis.reuse_key is None or any(st.unresolved for st in analysis.statements):
            return decide(policy, identity, analysis, connection, taints=taints)
        key = (
            analysis.reuse_key,
            connection,
            identity.subject,
            identity.kind,
            identity.groups,
            tuple(sorted(identity.attributes.items())),
            tuple(sorted(taints.items())) if taints else (),
        )
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
                self.hits += 1
        if found is None:
            decision = decide(policy, identity, analysis, connection, taints=taints)
            with self._lock:
                self.misses += 1
                self._entries[key] = decision
                while len(self._entries) > self._size:
                    self._entries.popitem(last=False)
            return decision
        # Only the redacted SQL depends on this cell's literal values.
        redacted = redact_sql(analysis, Classifier(policy, connection, taints), policy.defaults.redact_literals)
        return replace(found, redacted_sql=redacted)
