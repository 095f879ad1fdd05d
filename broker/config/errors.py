"""Config errors: every problem names the dotted key and the ``file:line:col`` it came from."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Origin:
    """Where a value (or key) was written."""

    file: str
    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


@dataclass(frozen=True)
class ConfigIssue:
    key: str  # dotted key, "" for the document itself
    message: str
    origin: Origin | None = None

    def __str__(self) -> str:
        where = f"{self.origin}: " if self.origin else ""
        key = f"{self.key}: " if self.key else ""
        return f"{where}{key}{self.message}"


class ConfigError(ValueError):
    """One or more config problems, all reported together."""

    def __init__(self, issues: list[ConfigIssue] | ConfigIssue) -> None:
        self.issues = [issues] if isinstance(issues, ConfigIssue) else list(issues)
        super().__init__(self.render())

    def render(self) -> str:
        if len(self.issues) == 1:
            return f"invalid config: {self.issues[0]}"
        lines = [f"invalid config ({len(self.issues)} errors):"]
        lines.extend(f"  {issue}" for issue in self.issues)
        return "\n".join(lines)
