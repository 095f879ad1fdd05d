"""Authenticators for the ``AuthChain`` (``broker/auth.py``): a password file and an HTTP service.

``build_authenticators(config)`` returns them in ``authentication.chain`` order, each enabled one once.
"""

from __future__ import annotations

from ..config.model import Authentication
from .http import HttpAuthenticator
from .password_file import PasswordFileAuthenticator


def build_authenticators(config: Authentication) -> list:
    hooks: list = []
    for name in dict.fromkeys(config.chain):
        if name == "password_file" and config.password_file.enable:
            hooks.append(PasswordFileAuthenticator(config.password_file))
        elif name == "http" and config.http.enable:
            hooks.append(HttpAuthenticator(config.http))
    return hooks


__all__ = ["HttpAuthenticator", "PasswordFileAuthenticator", "build_authenticators"]
