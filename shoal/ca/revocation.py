"""Revoked certificates: by subject (a node id, every certificate it ever had) or by serial
(one certificate: a user's, or a node's before a role change).

Checked by `Trust.verify` on every request, not by OpenSSL during the handshake: that is where
swarmkit checks it too (its BlacklistedCertificates), a change takes effect on the next request
without rebuilding any TLS context, and the refusal can say why. Entries may carry the time
after which they are moot (the last expiry of what they revoke) so the list can be pruned;
a revoked node id is kept for good by default, since a node id is never issued again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from shoal.ca.identity import Identity


@dataclass
class Revocations:
    subjects: dict[str, datetime | None] = field(default_factory=dict)  # CN -> prune after
    serials: dict[int, datetime | None] = field(default_factory=dict)  # serial -> prune after
    reasons: dict[str, str] = field(default_factory=dict)  # "cn:<name>" / "serial:<hex>"

    def revoke_node(self, node_id: str, *, until: datetime | None = None,
                    reason: str = "node removed") -> None:
        self.subjects[node_id] = until
        self.reasons[f"cn:{node_id}"] = reason

    def revoke_serial(self, serial: int, *, until: datetime | None = None,
                      reason: str = "certificate revoked") -> None:
        self.serials[serial] = until
        self.reasons[f"serial:{serial:x}"] = reason

    def why(self, ident: Identity) -> str | None:
        """The reason `ident`'s certificate is revoked, or None when it is not."""
        if ident.is_node and ident.name in self.subjects:
            return self.reasons.get(f"cn:{ident.name}", "revoked")
        if ident.serial in self.serials:
            return self.reasons.get(f"serial:{ident.serial:x}", "revoked")
        return None

    def prune(self, now: datetime) -> None:
        """Drop entries whose certificates have all expired (expiry refuses them anyway)."""
        for table, kind in ((self.subjects, "cn"), (self.serials, "serial")):
            for key, until in list(table.items()):
                if until is not None and until < now:
                    del table[key]  # type: ignore[arg-type]
                    label = key if kind == "cn" else f"{key:x}"
                    self.reasons.pop(f"{kind}:{label}", None)

    def to_dict(self) -> dict[str, Any]:
        def iso(t: datetime | None) -> str | None:
            return None if t is None else t.isoformat()

        return {
            "Nodes": [{"ID": k, "Until": iso(v), "Reason": self.reasons.get(f"cn:{k}", "")}
                      for k, v in sorted(self.subjects.items())],
            "Serials": [{"Serial": f"{k:x}", "Until": iso(v),
                         "Reason": self.reasons.get(f"serial:{k:x}", "")}
                        for k, v in sorted(self.serials.items())],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Revocations:
        def time(s: str | None) -> datetime | None:
            return None if s is None else datetime.fromisoformat(s)

        r = cls()
        for e in data.get("Nodes", []):
            r.revoke_node(e["ID"], until=time(e.get("Until")), reason=e.get("Reason") or
                          "node removed")
        for e in data.get("Serials", []):
            r.revoke_serial(int(e["Serial"], 16), until=time(e.get("Until")),
                            reason=e.get("Reason") or "certificate revoked")
        return r
