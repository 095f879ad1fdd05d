"""Fixtures for the operator tests: kmock running the real kopf operator, fake broker pods on loopback."""

from __future__ import annotations

import sys
from pathlib import Path

# Test modules import operator_pki / kmock_support by name (pytest runs with --import-mode=importlib).
sys.path.insert(0, str(Path(__file__).resolve().parent))
