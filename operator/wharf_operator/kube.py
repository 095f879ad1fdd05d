"""A small asyncio client for the Kubernetes API: get, list, create, merge-patch, server-side apply, delete.

kopf talks to the API for its own watches; the handlers use this client for the objects they own and for
status writes. Both are built from the same credentials (``credentials.py``), so the operator runs the same way
in a pod, with a kubeconfig, or against a test server.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp

# The field manager of every server-side apply the operator makes (``kubectl get -o yaml --show-managed-fields``).
FIELD_MANAGER = "wharf-operator"

TokenSource = Callable[[], "str | None | Awaitable[str | None]"]


class ApiError(Exception):
    def __init__(self, status: int, method: str, path: str, body: str) -> None:
        super().__init__(f"{method} {path}: HTTP {status}: {body[:500]}")
        self.status = status
        self.body = body

    def conflicts(self) -> list[str]:
        """For a 409 of a server-side apply: "<field> (manager ...)" of every conflicting field."""
        try:
            details = (json.loads(self.body) or {}).get("details") or {}
        except ValueError:
            return []
        return [f"{cause.get('field', '?')} ({cause.get('message', '')})" for cause in details.get("causes") or []
                if cause.get("reason") == "FieldManagerConflict"]


@dataclass(frozen=True)
class Resource:
    group: str  # "" for the core API
    version: str
    plural: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str | None = None, name: str | None = None, subresource: str | None = None) -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{quote(namespace, safe='')}"
        base += f"/{self.plural}"
        if name:
            base += f"/{quote(name, safe='')}"
        if subresource:
            base += f"/{subresource}"
        return base


SECRETS = Resource("", "v1", "secrets")
CONFIGMAPS = Resource("", "v1", "configmaps")
SERVICES = Resource("", "v1", "services")
SERVICEACCOUNTS = Resource("", "v1", "serviceaccounts")
PODS = Resource("", "v1", "pods")
STATEFULSETS = Resource("apps", "v1", "statefulsets")
PDBS = Resource("policy", "v1", "poddisruptionbudgets")
CERTIFICATES = Resource("cert-manager.io", "v1", "certificates")
NETWORKPOLICIES = Resource("networking.k8s.io", "v1", "networkpolicies")


class KubeApi:
    def __init__(self, server: str, *, ssl_context: ssl.SSLContext | bool | None = None,
                 token_source: TokenSource | None = None, timeout: float = 30.0) -> None:
        self.server = server.rstrip("/")
        self._ssl = ssl_context
        self._token_source = token_source
        self._timeout = aiohttp.ClientTimeout(total=timeout, sock_connect=10.0)
        self._session: aiohttp.ClientSession | None = None

    async def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self._token_source is not None:
            token = self._token_source()
            if hasattr(token, "__await__"):
                token = await token  # type: ignore[misc]
            if token:
                headers["Authorization"] = token if token.lower().startswith("bearer ") else f"Bearer {token}"
        return headers

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self._session

    async def request(self, method: str, path: str, *, params: dict[str, str] | None = None,
                      body: Any = None, content_type: str = "application/json") -> Any:
        headers = await self._headers()
        data = None
        if body is not None:
            headers["Content-Type"] = content_type
            data = json.dumps(body)
        url = self.server + path + (("?" + urlencode(params)) if params else "")
        kwargs: dict[str, Any] = {}
        if self._ssl is not None:
            kwargs["ssl"] = self._ssl
        async with self._client().request(method, url, data=data, headers=headers, **kwargs) as response:
            text = await response.text()
            if response.status >= 400:
                raise ApiError(response.status, method, path, text)
            return json.loads(text) if text else None

    async def get(self, resource: Resource, namespace: str | None, name: str) -> dict | None:
        try:
            return await self.request("GET", resource.path(namespace, name))
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def list(self, resource: Resource, namespace: str | None, label_selector: dict[str, str] | None = None,
                   ) -> list[dict]:
        params = {"labelSelector": ",".join(f"{k}={v}" for k, v in sorted(label_selector.items()))} \
            if label_selector else None
        result = await self.request("GET", resource.path(namespace), params=params)
        items = (result or {}).get("items") or []
        if label_selector:  # some API emulators ignore selectors; filtering twice costs nothing
            items = [item for item in items
                     if all(((item.get("metadata") or {}).get("labels") or {}).get(k) == v
                            for k, v in label_selector.items())]
        return items

    async def create(self, resource: Resource, namespace: str | None, body: dict) -> dict:
        return await self.request("POST", resource.path(namespace), body=body)

    async def patch(self, resource: Resource, namespace: str | None, name: str, patch: dict,
                    subresource: str | None = None) -> dict:
        return await self.request("PATCH", resource.path(namespace, name, subresource), body=patch,
                                  content_type="application/merge-patch+json")

    async def apply(self, resource: Resource, namespace: str | None, name: str, body: dict, *,
                    field_manager: str = FIELD_MANAGER, force: bool = False) -> dict:
        """Server-side apply: ``body`` is every field this manager owns; fields it owned before and no longer
        sends are removed. Without ``force`` a field another manager changed answers 409 (a conflict)."""
        params = {"fieldManager": field_manager}
        if force:
            params["force"] = "true"
        # JSON is YAML: the API server takes the apply body as either.
        return await self.request("PATCH", resource.path(namespace, name), params=params, body=body,
                                  content_type="application/apply-patch+yaml")

    async def delete(self, resource: Resource, namespace: str | None, name: str) -> None:
        try:
            await self.request("DELETE", resource.path(namespace, name))
        except ApiError as exc:
            if exc.status != 404:
                raise

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
