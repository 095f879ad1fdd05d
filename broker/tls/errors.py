"""The one error type the TLS layer raises for bad configuration or bad certificate material."""

from __future__ import annotations

from collections.abc import Sequence

from ..config.tls_rules import Problem


class TlsConfigError(ValueError):
    """A TLS option or a certificate/key/CA/CRL file is unusable; the message says which and why.

    ``reason``: for refused certificate material, the code of ``validation.REASONS`` (or ``Unreadable``,
    ``Invalid``) that the refusal metric counts. ``problems``: the options at fault, each by its key under
    ``ssl_options`` (empty when the message is about certificate material rather than an option)."""

    def __init__(self, message: str, reason: str = "Invalid", *, problems: Sequence[Problem] = ()) -> None:
        super().__init__(message)
        self.reason = reason
        self.problems = tuple(problems)

    @classmethod
    def of_option(cls, field: str, message: str) -> TlsConfigError:
        """A refusal of the option ``field`` (its key under ``ssl_options``), said as ``field: message``."""
        problem = Problem(field, message, message)
        return cls(str(problem), problems=[problem])
