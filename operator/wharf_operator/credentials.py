"""Cluster credentials: in-cluster ServiceAccount, a kubeconfig file, or KUBECONFIG.

One ``Credentials`` feeds both kopf (``connection_info``) and the handlers' own API client (``api``), so both
always talk to the same cluster as the same identity.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass

import kopf

from .kube import KubeApi


@dataclass
class Credentials:
    server: str
    ca_path: str | None = None
    insecure: bool = False
    certificate_path: str | None = None
    private_key_path: str | None = None
    token_file: str | None = None  # re-read on every request: projected ServiceAccount tokens rotate
    token: str | None = None
    default_namespace: str | None = None

    def current_token(self) -> str | None:
        if self.token_file:
            with open(self.token_file, encoding="utf-8") as handle:
                return handle.read().strip()
        return self.token

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.server.startswith("https"):
            return None
        context = ssl.create_default_context(cafile=self.ca_path)
        if self.insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if self.certificate_path and self.private_key_path:
            context.load_cert_chain(self.certificate_path, self.private_key_path)
        return context

    def api(self) -> KubeApi:
        return KubeApi(self.server, ssl_context=self.ssl_context(), token_source=self.current_token)

    def connection_info(self) -> kopf.ConnectionInfo:
        token = self.current_token()
        return kopf.ConnectionInfo(
            server=self.server, ca_path=self.ca_path, insecure=self.insecure,
            scheme="Bearer" if token else None, token=token,
            certificate_path=self.certificate_path, private_key_path=self.private_key_path,
            default_namespace=self.default_namespace)


def load(kubeconfig: str | None = None, context: str | None = None) -> Credentials:
    """In-cluster config when running in a pod and no kubeconfig is given; else the kubeconfig."""
    from kubernetes import client, config

    configuration = client.Configuration()
    in_cluster = kubeconfig is None and not os.environ.get("KUBECONFIG") and \
        os.environ.get("KUBERNETES_SERVICE_HOST")
    if in_cluster:
        loader = config.incluster_config.InClusterConfigLoader(
            token_filename=config.incluster_config.SERVICE_TOKEN_FILENAME,
            cert_filename=config.incluster_config.SERVICE_CERT_FILENAME)
        loader.load_and_set(configuration)
        namespace_file = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
        namespace = None
        if os.path.exists(namespace_file):
            with open(namespace_file, encoding="utf-8") as handle:
                namespace = handle.read().strip()
        return Credentials(server=configuration.host, ca_path=configuration.ssl_ca_cert,
                           token_file=config.incluster_config.SERVICE_TOKEN_FILENAME,
                           default_namespace=namespace)
    config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=configuration)
    token = None
    if configuration.refresh_api_key_hook is not None:
        configuration.refresh_api_key_hook(configuration)
    # kubernetes-client releases differ in the key: "authorization" in older ones, "BearerToken" in newer.
    api_key = configuration.api_key or {}
    auth = api_key.get("authorization") or api_key.get("BearerToken")
    if auth:
        token = auth.split(" ", 1)[1] if auth.lower().startswith("bearer ") else auth
    return Credentials(server=configuration.host, ca_path=configuration.ssl_ca_cert,
                       insecure=not configuration.verify_ssl, certificate_path=configuration.cert_file,
                       private_key_path=configuration.key_file, token=token)
