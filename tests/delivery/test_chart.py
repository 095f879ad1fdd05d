"""The Helm chart: lint, schema, offline validation of what it renders, labels, security, RBAC scopes."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml
from delivery_support import (CHART, ROOT, SUPPORTED_KUBERNETES, Helm, custom_resource_errors, find,
                              kubernetes_errors)

# Value sets that between them switch on every template.
VALUE_SETS = {
    "defaults": [],
    "namespaced": ["operator.watchNamespaces={team-a,team-b}"],
    "everything": ["example.enabled=true", "metrics.serviceMonitor.enabled=true", "metrics.prometheusRule.enabled=true",
                   "metrics.brokerPodMonitor.enabled=true", "operator.networkPolicy.enabled=false",
                   "example.clientAuth=required",
                   "operator.verbose=true", "operator.allowPodNetworks={10.244.0.0/16}",
                   "serviceAccount.annotations.a=b"],
}

# Custom resources the chart may render; their schemas are not Kubernetes', so they are checked elsewhere
# (MQTTBroker against our CRD) or are third-party (cert-manager, Prometheus Operator).
CUSTOM_KINDS = {"MQTTBroker", "Issuer", "Certificate", "ServiceMonitor", "PodMonitor", "PrometheusRule"}

LABELS = ["app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version",
          "app.kubernetes.io/managed-by", "app.kubernetes.io/part-of", "app.kubernetes.io/component",
          "helm.sh/chart"]


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_lint_strict_is_clean(helm: Helm, values: list[str]) -> None:
    args = ["lint", "--strict", str(CHART)]
    for value in values:
        args += ["--set", value]
    out = helm.run(*args).stdout
    assert "0 chart(s) failed" in out
    assert "[WARNING]" not in out and "[ERROR]" not in out, out


@pytest.mark.parametrize("bad", [
    "operator.replicas=two",
    "operator.reloadWait=soon",
    "image.pullPolicy=Sometimes",
    "operator.watchNamespaces={Not_A_Namespace}",
    "example.clientAuth=maybe",
    "metrics.service.port=70000",
    "metrics.prometheusRule.certificateExpiryDays=0",
    "metrics.prometheusRule.wrongCertificateFor=ten",
    "operatr.replicas=1",
])
def test_schema_rejects_bad_values(helm: Helm, bad: str) -> None:
    proc = helm.run("template", "wharf", str(CHART), "--set", bad, check=False)
    assert proc.returncode != 0
    assert "schema" in proc.stderr, proc.stderr


def test_every_value_is_documented() -> None:
    """Every value in values.yaml has a comment above it, or sits inside a documented value (e.g. resources)."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    undocumented = []
    ancestors: list[tuple[int, bool]] = []  # (indent, documented) of the enclosing keys
    for index, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", "-")) or ":" not in stripped:
            continue
        indent = len(line) - len(line.lstrip())
        while ancestors and ancestors[-1][0] >= indent:
            ancestors.pop()
        key, _, value = stripped.partition(":")
        commented = index > 0 and lines[index - 1].strip().startswith("#")
        documented = commented or any(doc for _, doc in ancestors)
        is_section = value.strip() == ""  # a mapping whose own keys carry the comments
        if not documented and not is_section:
            undocumented.append(key)
        ancestors.append((indent, documented))
    assert undocumented == []
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert set(values) <= set(schema["properties"])


@pytest.mark.parametrize("kube_version", SUPPORTED_KUBERNETES)
@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_rendered_objects_are_valid_kubernetes(helm: Helm, values: list[str], kube_version: str,
                                               crd: dict) -> None:
    objects = helm.template(*values, kube_version=kube_version)
    errors = []
    for obj in objects:
        if obj["kind"] == "MQTTBroker":
            errors += custom_resource_errors(crd, obj)
        elif obj["kind"] not in CUSTOM_KINDS:
            errors += kubernetes_errors(obj, kube_version)
    assert errors == []


def test_validation_catches_a_broken_object(helm: Helm) -> None:
    """The offline validator is not vacuous: a wrong type and an unknown field are reported."""
    deployment = find(helm.template(), "Deployment")[0]
    deployment["spec"]["replicas"] = "two"
    deployment["spec"]["template"]["spec"]["containers"][0]["bogusField"] = 1
    assert kubernetes_errors(deployment, SUPPORTED_KUBERNETES[-1]) != []


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_every_object_carries_the_standard_labels(helm: Helm, values: list[str]) -> None:
    for obj in helm.template(*values):
        labels = obj["metadata"].get("labels", {})
        missing = [label for label in LABELS if label not in labels]
        assert missing == [], f"{obj['kind']}/{obj['metadata']['name']} lacks {missing}"
        assert labels["app.kubernetes.io/instance"] == "wharf"
        assert labels["app.kubernetes.io/part-of"] == "wharf"


def test_operator_pod_is_locked_down(helm: Helm) -> None:
    deployment = find(helm.template(), "Deployment")[0]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    (container,) = pod["containers"]
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"]["drop"] == ["ALL"]
    assert container["resources"]["requests"]["cpu"] and container["resources"]["requests"]["memory"]
    assert container["resources"]["limits"]["memory"]
    assert container["command"] == ["wharf-operator"]
    assert container["livenessProbe"]["httpGet"]["port"] == "health"
    # The selector is a subset of the pod's labels (else the Deployment selects nothing).
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()


def test_image_defaults_to_the_app_version_and_can_be_overridden(helm: Helm) -> None:
    app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    (container,) = find(helm.template(), "Deployment")[0]["spec"]["template"]["spec"]["containers"]
    assert container["image"] == f"wharf:{app_version}"
    (container,) = find(helm.template("image.repository=example/wharf", "image.tag=e2e"),
                        "Deployment")[0]["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "example/wharf:e2e"


def test_brokers_without_an_image_run_the_charts_image_unless_broker_image_says_otherwise(helm: Helm) -> None:
    def broker_image(*values: str) -> list[str]:
        (container,) = find(helm.template(*values), "Deployment")[0]["spec"]["template"]["spec"]["containers"]
        return [a for a in container["args"] if a.startswith("--broker-image")]

    app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    assert broker_image() == [f"--broker-image=wharf:{app_version}"]
    assert broker_image("image.repository=example/wharf", "image.tag=e2e") == ["--broker-image=example/wharf:e2e"]
    assert broker_image("image.tag=e2e", "operator.brokerImage=example/broker:1") == [
        "--broker-image=example/broker:1"]
    # The example MQTTBroker stores no image: it follows the operator's, through upgrades.
    (example,) = find(helm.template("example.enabled=true"), "MQTTBroker")
    assert "image" not in example["spec"]


# The chart's ClusterRoles besides the operator's own rules: its CRD upgrade, and the roles aggregated for people.
CRD_ROLE, VIEWER, EDITOR = "wharf-crd", "wharf-mqttbroker-viewer", "wharf-mqttbroker-editor"
LEADER_ELECTION = "wharf-leader-election"  # the Role (and binding) for the replicas' Lease, in the release namespace


def not_leader_election(objects: list[dict]) -> list[dict]:
    return [o for o in objects if o["metadata"]["name"] != LEADER_ELECTION]


def operator_roles(objects: list[dict]) -> list[dict]:
    """The (Cluster)Roles holding the operator's namespaced rules (named like the release)."""
    return [o for o in find(objects, "ClusterRole") + find(objects, "Role") if o["metadata"]["name"] == "wharf"]


def test_all_namespaces_mode_uses_a_cluster_role(helm: Helm) -> None:
    objects = helm.template()
    assert not_leader_election(find(objects, "Role")) == []
    assert not_leader_election(find(objects, "RoleBinding")) == []
    assert {r["metadata"]["name"] for r in find(objects, "ClusterRole")} == {"wharf", CRD_ROLE, VIEWER, EDITOR}
    (role,) = operator_roles(objects)
    (binding,) = find(objects, "ClusterRoleBinding", "wharf")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "wharf", "namespace": "wharf-system"}]
    args = find(objects, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--all-namespaces" in args


def test_namespaced_mode_grants_nothing_cluster_wide(helm: Helm) -> None:
    """Nothing cluster-wide but get and patch on the MQTTBroker CRD itself (crds.upgrade; off: nothing at all)."""
    objects = helm.template(*VALUE_SETS["namespaced"])
    (binding,) = find(objects, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == CRD_ROLE
    assert [r["metadata"]["name"] for r in find(objects, "ClusterRole") if r["metadata"]["name"] != CRD_ROLE] == \
        [VIEWER, EDITOR]  # for people, bound by nobody here: they only aggregate into view/edit/admin
    (crd_role,) = find(objects, "ClusterRole", CRD_ROLE)
    assert crd_role["rules"] == [{"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"],
                                  "resourceNames": ["mqttbrokers.mqtt.wharf.dev"], "verbs": ["get", "patch"]}]
    bare = helm.template(*VALUE_SETS["namespaced"], "crds.upgrade=false", "rbac.aggregateToDefaultRoles=false")
    assert find(bare, "ClusterRole") == [] and find(bare, "ClusterRoleBinding") == []
    args = find(bare, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--apply-crd" not in args
    assert "--apply-crd" in find(objects, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    roles = {r["metadata"]["namespace"]: r for r in not_leader_election(find(objects, "Role"))}
    bindings = {b["metadata"]["namespace"]: b for b in not_leader_election(find(objects, "RoleBinding"))}
    assert set(roles) == set(bindings) == {"team-a", "team-b"}
    for namespace, binding in bindings.items():
        assert binding["roleRef"]["name"] == roles[namespace]["metadata"]["name"]
        # The operator's ServiceAccount lives in the release namespace, not the watched one.
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "wharf", "namespace": "wharf-system"}]
    args = find(objects, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--all-namespaces" not in args
    assert {"--namespace=team-a", "--namespace=team-b"} <= set(args)
    # Both modes grant the same namespaced rules.
    cluster_rules = operator_roles(helm.template())[0]["rules"]
    for role in roles.values():
        assert all(rule in cluster_rules for rule in role["rules"])


def test_rbac_never_grants_wildcards(helm: Helm) -> None:
    for values in VALUE_SETS.values():
        for obj in find(helm.template(*values), "ClusterRole") + find(helm.template(*values), "Role"):
            for rule in obj["rules"]:
                assert "*" not in rule["verbs"] and "*" not in rule["resources"], rule
                assert "*" not in rule.get("apiGroups", []), rule


def test_metrics_service_and_service_monitor_point_at_the_operator(helm: Helm) -> None:
    objects = helm.template("metrics.serviceMonitor.enabled=true")
    deployment = find(objects, "Deployment")[0]
    (service,) = find(objects, "Service")
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    ports = deployment["spec"]["template"]["spec"]["containers"][0]["ports"]
    assert "metrics" in {p["name"] for p in ports}
    (monitor,) = find(objects, "ServiceMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    # The per-listener series carry the MQTTBroker's namespace: the scrape must not rename it.
    assert monitor["spec"]["endpoints"][0]["honorLabels"] is True
    assert find(helm.template(), "ServiceMonitor") == []
    assert find(helm.template("metrics.service.enabled=false"), "Service") == []


def test_broker_pod_monitor_scrapes_the_read_only_metrics_port(helm: Helm) -> None:
    """The brokers' metrics come from their port "metrics" (no token); the operator's from the ServiceMonitor."""
    from wharf_operator import resources

    assert find(helm.template(), "PodMonitor") == []
    (monitor,) = find(helm.template("metrics.brokerPodMonitor.enabled=true"), "PodMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= resources.labels("any-broker").items()
    assert monitor["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "broker"
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("metrics", "/metrics")
    assert "bearerTokenSecret" not in endpoint and "authorization" not in endpoint
    container = resources.stateful_set("b", "ns", resources_spec(), "h")["spec"]["template"]["spec"]["containers"][0]
    assert "metrics" in {port["name"] for port in container["ports"]}
    assert monitor["spec"]["namespaceSelector"] == {"any": True}
    (scoped,) = find(helm.template("metrics.brokerPodMonitor.enabled=true", *VALUE_SETS["namespaced"]), "PodMonitor")
    assert scoped["spec"]["namespaceSelector"] == {"matchNames": ["team-a", "team-b"]}


def resources_spec() -> dict:
    from wharf_operator.crd import defaulted_spec

    return defaulted_spec({})


def test_operator_names_its_own_pods_for_the_network_policies(helm: Helm) -> None:
    """The brokers' NetworkPolicies admit the admin port from exactly the pods the Deployment selects."""
    deployment = find(helm.template(), "Deployment")[0]
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--network-policy" in args and "--operator-namespace=wharf-system" in args
    labels = dict(a.split("=", 1)[1].split("=", 1) for a in args if a.startswith("--operator-pod-label="))
    assert labels == deployment["spec"]["selector"]["matchLabels"]
    off = find(helm.template("operator.networkPolicy.enabled=false"), "Deployment")[0]
    assert "--no-network-policy" in off["spec"]["template"]["spec"]["containers"][0]["args"]


PROMQL_WORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
                "offset", "inf", "nan"}


def promql_metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers that are not functions (followed by "("),
    keywords, label names (in braces or after by/on/...) or durations."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)  # string literals
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range selectors
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    names = set()
    for match in re.finditer(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?", expr):
        word, call = match.group(1), match.group(2)
        if not call and word.lower() not in PROMQL_WORDS:
            names.add(word)
    return names


def test_promql_metric_names_parses_selectors_not_functions() -> None:
    assert promql_metric_names('sum by (job) (rate(a_total{x="y{"}[5m])) > 2 * 60 unless on (n) b_seconds') == \
        {"a_total", "b_seconds"}
    assert promql_metric_names("time() - c_seconds > 14 * 86400") == {"c_seconds"}


def test_prometheus_rule_alerts_on_metrics_the_operator_exports(helm: Helm) -> None:
    from wharf_operator.metrics import OperatorMetrics

    exported = set(OperatorMetrics().names())
    assert find(helm.template(), "PrometheusRule") == []
    objects = helm.template("metrics.prometheusRule.enabled=true", "metrics.prometheusRule.certificateExpiryDays=30",
                            "metrics.prometheusRule.rotationStuckMinutes=20",
                            "metrics.prometheusRule.additionalAlertLabels.team=messaging")
    (rule,) = find(objects, "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    alerts = {r["alert"]: r for group in rule["spec"]["groups"] for r in group["rules"]}
    assert set(alerts) == {"WharfCertificateExpiringSoon", "WharfRotationStuck", "WharfPodServingWrongCertificate"}
    for name, alert in alerts.items():
        names = promql_metric_names(alert["expr"])
        assert names, name
        assert names <= exported, (name, names - exported)
        assert alert["labels"] == {"severity": "warning", "team": "messaging"}
        assert "{{ $labels.broker }}" in alert["annotations"]["description"]
    assert "30 * 86400" in alerts["WharfCertificateExpiringSoon"]["expr"]
    assert "20 * 60" in alerts["WharfRotationStuck"]["expr"]
    # Pods not serving during a rotation are WharfRotationStuck's, not this alert's.
    assert "unless on (namespace, broker, listener) wharf_operator_rotation_pending_since_seconds" in \
        alerts["WharfPodServingWrongCertificate"]["expr"]


def test_example_broker_chains_cert_manager_objects(helm: Helm, crd: dict) -> None:
    objects = helm.template("example.enabled=true", "example.name=demo")
    assert find(helm.template(), "MQTTBroker") == []
    (broker,) = find(objects, "MQTTBroker", "demo")
    assert custom_resource_errors(crd, broker) == []
    issuers = {i["metadata"]["name"]: i for i in find(objects, "Issuer")}
    certificates = {c["metadata"]["name"]: c for c in find(objects, "Certificate")}
    # self-signed Issuer -> CA Certificate -> CA Issuer -> server Certificate -> MQTTBroker
    ca_certificate = certificates["demo-ca"]
    assert ca_certificate["spec"]["isCA"] is True
    assert "selfSigned" in issuers[ca_certificate["spec"]["issuerRef"]["name"]]["spec"]
    server = certificates["demo-tls"]
    assert issuers[server["spec"]["issuerRef"]["name"]]["spec"]["ca"]["secretName"] == \
        ca_certificate["spec"]["secretName"]
    (listener,) = broker["spec"]["listeners"]
    assert listener["type"] == "ssl"
    assert listener["tls"]["secretName"] == server["spec"]["secretName"]
    # Client certificates are checked against the CA's own Secret, not the leaf Secret's ca.crt.
    assert listener["tls"]["caRef"]["name"] == ca_certificate["spec"]["secretName"]
    assert "demo.wharf-system.svc" in server["spec"]["dnsNames"]
    one_way = find(helm.template("example.enabled=true", "example.clientAuth=none"), "MQTTBroker")[0]
    assert "caRef" not in one_way["spec"]["listeners"][0]["tls"]


def render_notes(helm: Helm, tmp_path: Path, *values: str) -> str:
    """Render NOTES.txt without a cluster: a copy of the chart renders it through `tpl` into a ConfigMap."""
    chart = tmp_path / "wharf"
    shutil.copytree(CHART, chart)
    shutil.copy(chart / "templates" / "NOTES.txt", chart / "notes-source.txt")
    (chart / "templates" / "zz-notes.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\ndata:\n"
        "  notes: {{ tpl (.Files.Get \"notes-source.txt\") . | quote }}\n")
    args = ["template", "wharf", str(chart), "--namespace", "wharf-system", "--show-only", "templates/zz-notes.yaml"]
    for value in values:
        args += ["--set", value]
    return yaml.safe_load(helm.run(*args).stdout)["data"]["notes"]


def test_notes_explain_the_install(helm: Helm, tmp_path: Path) -> None:
    notes = render_notes(helm, tmp_path, "example.enabled=true")
    assert "rollout status deployment/wharf" in notes
    assert "watches MQTTBroker resources in all namespaces" in notes
    assert "port-forward svc/example 8883:8883" in notes
    assert "cmctl renew -n wharf-system example-tls" in notes
    namespaced = render_notes(helm, tmp_path / "namespaced", "operator.watchNamespaces={team-a}")
    assert "these namespaces only: team-a" in namespaced
    assert "manifests/examples/" in namespaced


def documented_rules(name: str = "wharf-operator") -> list[dict]:
    """The rules of a ClusterRole in docs/operator-rbac.md (the operator's own statement of what it needs)."""
    text = (ROOT / "docs" / "operator-rbac.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, flags=re.S)
    roles = [doc for block in blocks for doc in yaml.safe_load_all(block)
             if doc and doc.get("kind") == "ClusterRole" and doc["metadata"]["name"] == name]
    assert len(roles) == 1, f"docs/operator-rbac.md should hold one ClusterRole manifest named {name}"
    return roles[0]["rules"]


def normalized(rules: list[dict]) -> set[tuple[str, str, str]]:
    """Rules as (apiGroup, resource, verb) grants, however they are grouped."""
    return {(group, resource, verb) for rule in rules for group in rule["apiGroups"]
            for resource in rule["resources"] for verb in rule["verbs"]}


@pytest.mark.parametrize("values", [VALUE_SETS["defaults"], VALUE_SETS["namespaced"]], ids=["cluster", "namespaced"])
def test_rbac_is_exactly_what_the_operator_documents(helm: Helm, values: list[str]) -> None:
    objects = helm.template(*values)
    roles = operator_roles(objects)
    assert roles
    for role in roles:
        assert normalized(role["rules"]) == normalized(documented_rules()), role["kind"]
    # The CRD role, its resourceNames included, and the roles for people.
    assert find(objects, "ClusterRole", CRD_ROLE)[0]["rules"] == documented_rules("wharf-operator-crd")
    for name, documented in ((VIEWER, "wharf-mqttbroker-viewer"), (EDITOR, "wharf-mqttbroker-editor")):
        assert find(objects, "ClusterRole", name)[0]["rules"] == documented_rules(documented)


def test_people_roles_aggregate_into_view_edit_and_admin(helm: Helm) -> None:
    objects = helm.template()
    aggregate = "rbac.authorization.k8s.io/aggregate-to-"
    labels = {name: {k[len(aggregate):] for k, v in find(objects, "ClusterRole", name)[0]["metadata"]["labels"].items()
                     if k.startswith(aggregate) and v == "true"} for name in (VIEWER, EDITOR)}
    assert labels == {VIEWER: {"view", "edit", "admin"}, EDITOR: {"edit", "admin"}}
    viewer = normalized(find(objects, "ClusterRole", VIEWER)[0]["rules"])
    assert {v for _, _, v in viewer} == {"get", "list", "watch"}
    editor = normalized(find(objects, "ClusterRole", EDITOR)[0]["rules"])
    assert ("mqtt.wharf.dev", "mqttbrokers", "create") in editor
    assert not any(r == "mqttbrokers/status" for _, r, _ in editor)  # status is the operator's
    assert find(helm.template("rbac.aggregateToDefaultRoles=false"), "ClusterRole", VIEWER) == []
    assert find(helm.template("rbac.create=false"), "ClusterRole") == []


@pytest.mark.parametrize("values", [VALUE_SETS["defaults"], VALUE_SETS["namespaced"]], ids=["cluster", "namespaced"])
def test_rbac_covers_every_resource_the_operator_uses(helm: Helm, values: list[str]) -> None:
    """Each resource the operator's API client knows (wharf_operator.kube) is granted, read-only for pods."""
    from wharf_operator import crd, kube

    objects = helm.template(*values)
    roles = operator_roles(objects)
    used = [value for value in vars(kube).values() if isinstance(value, kube.Resource)]
    assert {r.plural for r in used} >= {"secrets", "configmaps", "pods", "statefulsets"}
    for role in roles:
        grants = normalized(role["rules"])
        for resource in used:
            verbs = {verb for group, name, verb in grants if (group, name) == (resource.group, resource.plural)}
            assert verbs, (role["kind"], resource)
            if resource.plural != "pods":  # pods are only read (the StatefulSet makes them)
                assert "create" in verbs, (role["kind"], resource)
        assert {"get", "list", "watch", "patch"} <= {v for g, r, v in grants if (g, r) == (crd.GROUP, crd.PLURAL)}
        # The broker pods are never created, exec'd into or deleted by the operator; the only deletions are a
        # deployed NATS' objects when spec.cluster stops deploying it, and NetworkPolicies turned off.
        assert {v for g, r, v in grants if r == "pods"} == {"list"}
        assert not any(r == "pods/exec" for _, r, _ in grants)
        assert {r for _, r, v in grants if v == "delete"} == {"configmaps", "services", "statefulsets",
                                                              "poddisruptionbudgets", "networkpolicies"}


def documented_leader_election_rules() -> list[dict]:
    text = (ROOT / "docs" / "operator-rbac.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, flags=re.S)
    roles = [doc for block in blocks for doc in yaml.safe_load_all(block) if doc and doc.get("kind") == "Role"]
    assert len(roles) == 1, "docs/operator-rbac.md should hold one Role manifest (leader election)"
    return roles[0]["rules"]


@pytest.mark.parametrize("values", [VALUE_SETS["defaults"], VALUE_SETS["namespaced"]], ids=["cluster", "namespaced"])
def test_leader_election_by_default(helm: Helm, values: list[str]) -> None:
    """Two replicas elect a leader on a Lease in the release namespace; the Role grants that Lease only (create
    cannot name one), as docs/operator-rbac.md documents; replicas prefer different nodes."""
    objects = helm.template(*values)
    deployment = find(objects, "Deployment")[0]
    assert deployment["spec"]["replicas"] == 2 and deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    pod = deployment["spec"]["template"]["spec"]
    args = pod["containers"][0]["args"]
    assert {"--leader-elect", "--leader-election-namespace=wharf-system", "--leader-election-id=wharf"} <= set(args)
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in pod["containers"][0]["env"]}
    assert env == {"POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace"}
    anti = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert anti[0]["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    (role,) = [r for r in find(objects, "Role") if r["metadata"]["name"].endswith(LEADER_ELECTION)]
    (binding,) = [b for b in find(objects, "RoleBinding") if b["metadata"]["name"].endswith(LEADER_ELECTION)]
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == "wharf-system"
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "wharf", "namespace": "wharf-system"}]
    assert role["rules"] == documented_leader_election_rules()
    assert all(rule.get("resourceNames") == ["wharf"] for rule in role["rules"] if "create" not in rule["verbs"])


def test_without_leader_election_one_replica_and_no_lease_role(helm: Helm) -> None:
    objects = helm.template("operator.leaderElection.enabled=false", "operator.replicas=1")
    assert not any(r["metadata"]["name"].endswith(LEADER_ELECTION) for r in find(objects, "Role"))
    deployment = find(objects, "Deployment")[0]
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    assert not any(a.startswith("--leader") for a in deployment["spec"]["template"]["spec"]["containers"][0]["args"])
    # The schema refuses several replicas without an election.
    proc = helm.run("template", "wharf", str(CHART), "--set", "operator.leaderElection.enabled=false",
                    "--set", "operator.replicas=2", check=False)
    assert proc.returncode != 0 and "schema" in proc.stderr, proc.stderr
