"""The one error type the TLS layer raises for bad configuration or bad certificate material."""

from __future__ import annotations


class TlsConfigError(ValueError):
    """A TLS option or a certificate/key/CA/CRL file is unusable; the message says which and why.

    ``reason``: for refused certificate material, the code of ``validation.REASONS`` (or ``Unreadable``,
    ``Invalid``) that the refusal metric counts."""

    def __init__(self, message: str, reason: str = "Invalid") -> None:
        super().__init__(message)
        self.reason = reason
