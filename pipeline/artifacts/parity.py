"""strip: reports/parity.json, the checks that prove the deployable is the plain torchvision model."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from pipeline.artifacts.base import Artifact


@dataclass(frozen=True)
class Check:
    """One check: whether it passed, what it counted or measured, and (failed) a readable diff."""

    name: str
    passed: bool
    detail: dict[str, Any] = field(default_factory=dict)
    diff: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ParityProof(Artifact):
    """Every check of docs/method.md's "Strip and parity"; the deployable is written only when all pass."""

    STAGE: ClassVar[str] = "strip"
    passed: bool
    checks: list[Check]

    @classmethod
    def upgrade(cls, value: Any) -> Any:
        """parity.json as it was before this shape: checks keyed by name, each flat ({"passed", ...})."""
        if not isinstance(value, dict) or not isinstance(value.get("checks"), dict):
            return value
        checks = [
            {"name": name, "passed": c["passed"], "diff": c.get("diff", [])}
            | {"detail": {k: v for k, v in c.items() if k not in ("passed", "diff")}}
            for name, c in value["checks"].items()
        ]
        return {**value, "checks": checks}

    @classmethod
    def of(cls, checks: list[Check]) -> ParityProof:
        return cls(all(c.passed for c in checks), checks)

    def explain(self) -> str:
        """The failed checks, each with its diff (or what it measured)."""
        lines = []
        for c in self.checks:
            if not c.passed:
                lines += [f"[FAIL] {c.name}", *(f"    {d}" for d in (c.diff or [str(c.detail)]))]
        return "\n".join(lines)
