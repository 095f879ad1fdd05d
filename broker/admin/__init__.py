"""The admin API (EMQX-style paths under ``/api/v5``), ``/metrics``, ``/healthz`` and ``/readyz`` on aiohttp."""
