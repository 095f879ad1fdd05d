"""Binds a parsed HOCON tree onto the typed model (``model.py``) and checks what a broker needs to start.

Every problem becomes a ``ConfigIssue`` naming the dotted key and its ``file:line:col``; all of them are
collected and raised together as one ``ConfigError`` so that an operator fixes a file in one round, and the
broker never starts half-configured.

File paths in the config (certificates, keys, CRLs, the PSK file, the token file) are resolved when the config is
loaded and written back as absolute paths. ``${WHARF_STATE_DIR}`` in a path (and in ``dashboard.upload_dir``) (quoted, as EMQX writes
``${EMQX_ETC_DIR}``; it is not an environment variable) stands for the state directory, ``state_dir()``: where the
embedded default's generated certificates live (``tls/localpki.py``). A relative path is looked up, in order,
under ``$WHARF_HOME`` (when set), the working directory, and the directory the package was installed from (the
checkout, for an editable install).
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import os
import re
import types
import typing
from importlib import resources
from pathlib import Path
from typing import Any, Iterable

from . import model
from .errors import ConfigError, ConfigIssue, Origin
from .hocon import ListNode, Node, ObjectNode, ScalarNode, from_plain, parse_file, parse_string
from .model import BrokerConfig, SslOptions
from .password_hash import check_hash_format
from .tls_rules import check_ssl_options

DEFAULT_CONFIG_RESOURCE = "default.conf"
LISTENER_TYPES = ("tcp", "ssl", "ws", "wss")
_LISTENER_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]*$")


# ---------------------------------------------------------------------------------------------------------------
# Public API


def load_file(path: str | os.PathLike) -> BrokerConfig:
    """The whole broker config from a HOCON file."""
    return bind_config(parse_file(path))


def load_string(text: str, source: str = "<string>") -> BrokerConfig:
    """The whole broker config from HOCON text (includes are looked up from the working directory)."""
    return bind_config(parse_string(text, source))


def embedded_default() -> BrokerConfig:
    """The config the broker runs with when it is given none (``config/default.conf``)."""
    resource = resources.files(__package__).joinpath(DEFAULT_CONFIG_RESOURCE)
    with resources.as_file(resource) as path:
        return load_file(path)


def bind_config(tree: ObjectNode) -> BrokerConfig:
    binder = _Binder()
    config = binder.bind(tree, BrokerConfig, "")
    _Checker(config, binder).run()
    if binder.issues:
        raise ConfigError(sorted(binder.issues, key=_position))
    return config


def _position(issue: ConfigIssue) -> tuple:
    origin = issue.origin
    return (0, origin.file, origin.line, origin.col) if origin else (1, "", 0, 0)


def bind_ssl_options(changes: dict[str, Any], current: SslOptions, key: str, source: str = "<api>") -> SslOptions:
    """``current`` with ``changes`` (plain JSON values) applied, validated like a file's ``ssl_options``.

    Used for run-time updates: a bad value raises ``ConfigError`` and nothing is applied.
    """
    if not isinstance(changes, dict):
        raise ConfigError(ConfigIssue(key, "ssl_options must be an object", Origin(source, 1, 1)))
    merged = dataclasses.asdict(current)
    for name, value in changes.items():
        if isinstance(value, dict) and isinstance(merged.get(name), dict):
            merged[name] = {**merged[name], **value}
        else:
            merged[name] = value
    binder = _Binder()
    options = binder.bind(from_plain(merged, Origin(source, 1, 1)), SslOptions, key)
    if not binder.issues:
        _Checker(None, binder).check_ssl_options(options, key)
    if binder.issues:
        raise ConfigError(binder.issues)
    return options


def parse_bind(text: str) -> tuple[str, int]:
    """``host:port``, ``:port``, ``port`` or ``[v6]:port`` → (host, port); host ``""`` means every address."""
    text = text.strip()
    if re.fullmatch(r"[0-9]+", text):
        host, port_text = "", text
    else:
        bracketed = re.fullmatch(r"\[([^\]]+)\]:([0-9]+)", text)
        match = bracketed or re.fullmatch(r"([^:\[\]]*):([0-9]+)", text)
        if not match:
            raise ValueError(f"bind {text!r} is not host:port, :port, port or [ipv6]:port")
        host, port_text = match.group(1), match.group(2)
        if bracketed:
            try:
                ipaddress.IPv6Address(host.split("%")[0])
            except ValueError:
                raise ValueError(f"bind {text!r}: {host!r} is not an IPv6 address") from None
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError(f"bind {text!r}: port {port} is not in 0..65535")
    return host, port


def format_bind(host: str, port: int) -> str:
    """The inverse of ``parse_bind`` (IPv6 hosts in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


STATE_DIR_PLACEHOLDER = "${WHARF_STATE_DIR}"


def state_dir() -> Path:
    """Where Wharf keeps what it generates: ``$WHARF_HOME``, else ``$XDG_STATE_HOME/wharf``, else
    ``~/.local/state/wharf`` (absolute; it may not exist yet)."""
    home = os.environ.get("WHARF_HOME")
    if home:
        return Path(home).expanduser().absolute()
    xdg = os.environ.get("XDG_STATE_HOME")
    # The XDG spec: a relative $XDG_STATE_HOME is invalid and must be ignored.
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".local" / "state"
    return base / "wharf"


def expand_path(value: str) -> str:
    """``value`` with ``${WHARF_STATE_DIR}`` replaced by the state directory."""
    if STATE_DIR_PLACEHOLDER in value:
        return value.replace(STATE_DIR_PLACEHOLDER, str(state_dir()))
    return value


def resolve_file(value: str) -> Path | None:
    """The existing file a config path refers to, or None (see the module doc for the search order)."""
    path = Path(expand_path(value)).expanduser()
    if path.is_absolute():
        return path if path.exists() else None
    for base in search_dirs():
        candidate = base / path
        if candidate.exists():
            return candidate.resolve()
    return None


def search_dirs() -> list[Path]:
    dirs: list[Path] = []
    home = os.environ.get("WHARF_HOME")
    if home:
        dirs.append(Path(home))
    dirs.append(Path.cwd())
    # broker/config/loader.py → the checkout (or site-packages for a regular install).
    install_home = Path(__file__).resolve().parents[2]
    if install_home not in dirs:
        dirs.append(install_home)
    return dirs


# ---------------------------------------------------------------------------------------------------------------
# Binding

_INVALID = object()


def _describe(node: Node) -> str:
    if isinstance(node, ObjectNode):
        return "an object"
    if isinstance(node, ListNode):
        return "an array"
    assert isinstance(node, ScalarNode)
    return "null" if node.value is None else repr(node.as_text())


_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)", re.IGNORECASE)
_BYTESIZE_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "m": 1024**2, "mb": 1024**2, "g": 1024**3, "gb": 1024**3,
                   "t": 1024**4, "tb": 1024**4}
_BYTESIZE = re.compile(r"(\d+)\s*([kmgt]?b?)", re.IGNORECASE)


def parse_duration(value: Any) -> float:
    """``15s``, ``2h``, ``500ms``, ``1h30m`` or a number of seconds → seconds."""
    if isinstance(value, bool):
        raise ValueError("a duration like 15s, 2h or 500ms")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = str(value).strip()
        if re.fullmatch(r"\d+(\.\d+)?", text):
            seconds = float(text)
        elif text and re.fullmatch(rf"(?:{_DURATION.pattern}\s*)+", text, re.IGNORECASE):
            seconds = sum(float(n) * _DURATION_UNITS[u.lower()] for n, u in _DURATION.findall(text))
        else:
            raise ValueError("a duration like 15s, 2h or 500ms")
    if seconds < 0:
        raise ValueError("a duration that is not negative")
    return seconds


def parse_bytesize(value: Any) -> int:
    """``1MB``, ``64KB`` (1024-based) or a number of bytes → bytes."""
    if isinstance(value, bool):
        raise ValueError("a size like 1MB, 64KB or a number of bytes")
    if isinstance(value, int):
        size = value
    elif isinstance(value, float) and value.is_integer():
        size = int(value)
    else:
        match = _BYTESIZE.fullmatch(str(value).strip())
        if not match:
            raise ValueError("a size like 1MB, 64KB or a number of bytes")
        size = int(match.group(1)) * _BYTESIZE_UNITS[match.group(2).lower()]
    if size < 0:
        raise ValueError("a size that is not negative")
    return size


class _Binder:
    def __init__(self) -> None:
        self.issues: list[ConfigIssue] = []
        # Where each bound dotted key was written: later checks point at the right line.
        self.origins: dict[str, Origin] = {}
        self._hints: dict[type, dict[str, Any]] = {}

    def issue(self, key: str, message: str, origin: Origin | None) -> None:
        self.issues.append(ConfigIssue(key, message, origin))

    def has_issue_under(self, key: str) -> bool:
        return any(i.key == key or i.key.startswith(key + ".") for i in self.issues)

    def hints(self, cls: type) -> dict[str, Any]:
        if cls not in self._hints:
            self._hints[cls] = typing.get_type_hints(cls, vars(model), include_extras=True)
        return self._hints[cls]

    def bind(self, node: Node, tp: Any, key: str) -> Any:
        self.origins[key] = node.origin
        origin = typing.get_origin(tp)
        args = typing.get_args(tp)
        if origin is typing.Annotated:
            return self.bind_annotated(node, args[0], args[1], key)
        if origin is typing.Union or origin is types.UnionType:
            options = [a for a in args if a is not type(None)]
            if isinstance(node, ScalarNode) and node.value is None:
                return None
            return self.bind(node, options[0] if len(options) == 1 else tp, key)
        if origin is typing.Literal:
            return self.bind_literal(node, args, key)
        if origin is list:
            return self.bind_list(node, args[0], key)
        if origin is dict:
            return self.bind_dict(node, args[1], key)
        if dataclasses.is_dataclass(tp):
            return self.bind_dataclass(node, tp, key)
        return self.bind_scalar(node, tp, key)

    def expect_scalar(self, node: Node, what: str, key: str) -> ScalarNode | None:
        if isinstance(node, ScalarNode) and node.value is not None:
            return node
        self.issue(key, f"expected {what}, got {_describe(node)}", node.origin)
        return None

    def bind_annotated(self, node: Node, base: Any, tag: str, key: str) -> Any:
        if tag == "limit":
            if isinstance(node, ScalarNode) and (node.value is None or node.value == "infinity"):
                return None
            value = self.bind_scalar(node, int, key, what="a whole number or infinity")
            if value is not _INVALID and value < 0:
                self.issue(key, f"expected a whole number >= 0 or infinity, got {value}", node.origin)
                return _INVALID
            return value
        scalar = self.expect_scalar(node, f"a {tag}", key)
        if scalar is None:
            return _INVALID
        try:
            return parse_duration(scalar.value) if tag == "duration" else parse_bytesize(scalar.value)
        except ValueError as exc:
            self.issue(key, f"expected {exc}, got {_describe(node)}", node.origin)
            return _INVALID

    def bind_literal(self, node: Node, choices: tuple, key: str) -> Any:
        scalar = self.expect_scalar(node, "one of " + ", ".join(map(str, choices)), key)
        if scalar is None:
            return _INVALID
        text = scalar.as_text()
        if text in choices:
            return text
        hint = difflib.get_close_matches(text, [str(c) for c in choices], n=1)
        suffix = f" (did you mean {hint[0]}?)" if hint else ""
        self.issue(key, f"{text!r} is not one of {', '.join(map(str, choices))}{suffix}", node.origin)
        return _INVALID

    def bind_list(self, node: Node, item_type: Any, key: str) -> Any:
        if isinstance(node, ScalarNode) and isinstance(node.value, str):
            # EMQX also accepts comma-separated strings (ciphers = "A,B").
            items: list[Node] = [ScalarNode(node.origin, part.strip(), raw=part.strip(), quoted=True)
                                 for part in node.value.split(",") if part.strip()]
        elif isinstance(node, ListNode):
            items = node.items
        else:
            self.issue(key, f"expected an array, got {_describe(node)}", node.origin)
            return _INVALID
        values = [self.bind(item, item_type, f"{key}[{i}]") for i, item in enumerate(items)]
        return _INVALID if any(v is _INVALID for v in values) else values

    def bind_dict(self, node: Node, value_type: Any, key: str) -> Any:
        if not isinstance(node, ObjectNode):
            self.issue(key, f"expected an object, got {_describe(node)}", node.origin)
            return _INVALID
        out = {}
        for name, child in node.fields.items():
            value = self.bind(child, value_type, f"{key}.{name}")
            if value is not _INVALID:
                out[name] = value
        return out

    def bind_dataclass(self, node: Node, cls: type, key: str) -> Any:
        if not isinstance(node, ObjectNode):
            self.issue(key, f"expected an object, got {_describe(node)}", node.origin)
            return cls()  # keep checking the rest of the file
        hints = self.hints(cls)
        known = [f.name for f in dataclasses.fields(cls)]
        kwargs = {}
        for name, child in node.fields.items():
            child_key = f"{key}.{name}" if key else name
            if name not in hints:
                hint = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
                suffix = f" (did you mean {hint[0]!r}?)" if hint else ""
                where = f"in {key}" if key else "at the top level"
                self.issue(child_key, f"unknown key {name!r} {where}{suffix}",
                           node.key_origins.get(name, child.origin))
                continue
            value = self.bind(child, hints[name], child_key)
            if value is not _INVALID:
                kwargs[name] = value
        return cls(**kwargs)

    def bind_scalar(self, node: Node, tp: Any, key: str, what: str | None = None) -> Any:
        names = {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}
        scalar = self.expect_scalar(node, what or names.get(tp, str(tp)), key)
        if scalar is None:
            return _INVALID
        value = scalar.value
        if tp is str:
            if isinstance(value, (str, int, float, bool)):
                return scalar.as_text()
        elif tp is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "yes", "on", "false", "no", "off"):
                return value.lower() in ("true", "yes", "on")
        elif tp is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
            if isinstance(value, float) and value.is_integer():
                return int(value)
            if isinstance(value, str) and re.fullmatch(r"-?[0-9]+", value.strip()):
                return int(value)
        elif tp is float:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
            if isinstance(value, str):
                try:
                    return float(value)
                except ValueError:
                    pass
        self.issue(key, f"expected {what or names.get(tp, str(tp))}, got {_describe(node)}", node.origin)
        return _INVALID


# ---------------------------------------------------------------------------------------------------------------
# Checks that need the whole config (and no TLS library)


class _Checker:
    def __init__(self, config: BrokerConfig | None, binder: _Binder) -> None:
        self.config = config
        self.binder = binder

    def issue(self, key: str, message: str) -> None:
        # A key that already failed to bind fell back to its default: do not report consequences of that.
        if self.binder.has_issue_under(key):
            return
        origin = self.binder.origins.get(key)
        parent = key
        while origin is None and "." in parent:
            parent = parent.rsplit(".", 1)[0]
            origin = self.binder.origins.get(parent)
        self.binder.issue(key, message, origin)

    def run(self) -> None:  # noqa: C901 - one branch per node kind and binding rule
        config = self.config
        assert config is not None
        self.check_mqtt(config.mqtt)
        self.check_sys_topics(config.sys_topics)
        binds: list[tuple[str, str, int]] = []
        for kind, name, listener in iter_listeners(config):
            key = f"listeners.{kind}.{name}"
            if not _LISTENER_NAME.match(name):
                self.issue(key, f"listener name {name!r} may only hold letters, digits, '_' and '-'")
            try:
                host, port = parse_bind(listener.bind)
            except ValueError as exc:
                self.issue(f"{key}.bind", str(exc))
                continue
            if not listener.enable:
                continue
            binds.append((f"{key}.bind", host, port))
            if listener.proxy_protocol and kind == "wss":
                self.issue(f"{key}.proxy_protocol", "is only supported on tcp, ssl and ws listeners")
            if listener.proxy_protocol_timeout <= 0:
                self.issue(f"{key}.proxy_protocol_timeout", "must be greater than 0")
            self.check_proxy_trust(listener, f"{key}.proxy_protocol_trusted_cidrs")
            if kind in ("ws", "wss"):
                self.check_websocket(listener.websocket, f"{key}.websocket")
            if kind in ("ssl", "wss"):
                self.check_ssl_options(listener.ssl_options, f"{key}.ssl_options")
        dashboard = config.dashboard
        dashboard.upload_dir = expand_path(dashboard.upload_dir)
        if dashboard.enable:
            key = "dashboard.listeners.http.bind"
            try:
                host, port = parse_bind(dashboard.listeners.http.bind)
            except ValueError as exc:
                self.issue(key, str(exc))
            else:
                binds.append((key, host, port))
                if dashboard.token_file:
                    self.check_file(dashboard, "token_file", "dashboard.token_file")
                if not is_loopback(host) and not (dashboard.token or dashboard.token_file):
                    self.issue(key, f"the admin API is bound to {dashboard.listeners.http.bind!r}, beyond "
                                    "loopback: set dashboard.token or dashboard.token_file")
            self.check_dashboard_login(dashboard)
        if config.prometheus.enable:
            try:
                host, port = parse_bind(config.prometheus.bind)
            except ValueError as exc:
                self.issue("prometheus.bind", str(exc))
            else:
                binds.append(("prometheus.bind", host, port))
        self.check_bind_conflicts(binds)
        psk = config.psk_authentication
        if psk.enable:
            if not psk.init_file:
                self.issue("psk_authentication.init_file", "is required when psk_authentication.enable = true")
            else:
                self.check_file(psk, "init_file", "psk_authentication.init_file")
            if not psk.separator:
                self.issue("psk_authentication.separator", "must not be empty")
        self.check_access_control(config)
        if config.durable_storage.enable and config.cluster.enable:
            self.issue("durable_storage.enable", "cannot be combined with cluster.enable: a cluster keeps sessions, "
                                                 "messages and retained messages in JetStream (docs/durability.md)")

    def check_access_control(self, config: model.BrokerConfig) -> None:  # noqa: C901 - one check per config field
        """authentication / authorization / flapping_detect: files that exist, positive limits."""
        authn = config.authentication
        if authn.password_file.enable:
            if not authn.password_file.path:
                self.issue("authentication.password_file.path", "is required when password_file.enable = true")
            else:
                self.check_file(authn.password_file, "path", "authentication.password_file.path")
        http = authn.http
        if http.enable and not http.url.startswith(("http://", "https://")):
            self.issue("authentication.http.url", "must be an http:// or https:// URL")
        for name in ("request_timeout", "connect_timeout"):
            if getattr(http, name) <= 0:
                self.issue(f"authentication.http.{name}", "must be greater than 0")
        if http.pool_size < 1 or http.cache_max_size < 0:
            self.issue("authentication.http", "pool_size must be at least 1 and cache_max_size at least 0")
        acl = config.authorization.file
        if acl.enable:
            if not acl.path:
                self.issue("authorization.file.path", "is required when file.enable = true")
            else:
                self.check_file(acl, "path", "authorization.file.path")
        if config.authorization.cache.max_size < 1:
            self.issue("authorization.cache.max_size", "must be at least 1")
        flapping = config.flapping_detect
        if flapping.max_count < 1 or flapping.window_time <= 0 or flapping.ban_time <= 0 or flapping.max_tracked < 1:
            self.issue("flapping_detect", "max_count, max_tracked, window_time and ban_time must be positive")
        if flapping.address_max_count < 0:
            self.issue("flapping_detect.address_max_count", "must be 0 (off) or more")
        password_file = authn.password_file
        if password_file.hash_workers < 1:
            self.issue("authentication.password_file.hash_workers", "must be at least 1")
        if password_file.hash_queue_size < 1:
            self.issue("authentication.password_file.hash_queue_size", "must be at least 1")
        throttle = authn.login_throttle
        if throttle.allowed_failures < 0:
            self.issue("authentication.login_throttle.allowed_failures", "must be 0 or more")
        for name in ("initial_backoff", "max_backoff", "forget_after"):
            if getattr(throttle, name) <= 0:
                self.issue(f"authentication.login_throttle.{name}", "must be greater than 0")
        if throttle.max_backoff < throttle.initial_backoff:
            self.issue("authentication.login_throttle.max_backoff", "must not be less than initial_backoff")
        if throttle.refusal_delay < 0:
            self.issue("authentication.login_throttle.refusal_delay", "must be 0 or more")
        if throttle.max_pending_checks < 1:
            self.issue("authentication.login_throttle.max_pending_checks", "must be at least 1")
        if throttle.max_tracked < 1:
            self.issue("authentication.login_throttle.max_tracked", "must be at least 1")
        retainer = config.retainer
        if retainer.max_retained_messages is not None and retainer.max_retained_messages < 1:
            self.issue("retainer.max_retained_messages", "must be at least 1 (or infinity)")
        for name in ("max_payload_size", "max_retained_bytes"):
            if getattr(retainer, name) < 1:
                self.issue(f"retainer.{name}", "must be at least 1 byte")

    def check_sys_topics(self, sys_topics: model.SysTopics) -> None:
        for name in ("sys_msg_interval", "sys_heartbeat_interval"):
            value = getattr(sys_topics, name)
            if value != 0 and value < 1:
                self.issue(f"sys_topics.{name}", "must be 0 (off) or at least 1s")

    def check_mqtt(self, mqtt: model.MqttSettings) -> None:  # noqa: C901 - one check per config field
        if not 0 <= mqtt.max_qos_allowed <= 2:
            self.issue("mqtt.max_qos_allowed", f"must be 0, 1 or 2, not {mqtt.max_qos_allowed}")
        if not 0 < mqtt.max_packet_size <= 268435455:
            self.issue("mqtt.max_packet_size", "must be between 1 byte and 256MB (MQTT's largest packet)")
        if not 0 < mqtt.connect_max_packet_size <= 268435455:
            self.issue("mqtt.connect_max_packet_size", "must be between 1 byte and 256MB (MQTT's largest packet)")
        for name in ("max_user_properties", "connect_max_user_properties"):
            if getattr(mqtt, name) < 0:
                self.issue(f"mqtt.{name}", "must be 0 or more")
        for name in ("max_properties_size", "connect_max_properties_size"):
            if getattr(mqtt, name) < 1:
                self.issue(f"mqtt.{name}", "must be at least 1 byte")
        if mqtt.max_topic_filters_per_packet is not None and mqtt.max_topic_filters_per_packet < 1:
            self.issue("mqtt.max_topic_filters_per_packet", "must be at least 1 (or infinity)")
        if mqtt.max_subscriptions is not None and mqtt.max_subscriptions < 1:
            self.issue("mqtt.max_subscriptions", "must be at least 1 (or infinity)")
        if not 1 <= mqtt.max_inflight <= 65535:
            self.issue("mqtt.max_inflight", "must be in 1..65535")
        if not 0 <= mqtt.max_topic_alias <= 65535:
            self.issue("mqtt.max_topic_alias", "must be in 0..65535")
        if mqtt.max_clientid_len < 23:
            self.issue("mqtt.max_clientid_len", "must be at least 23 (MQTT requires that much)")
        if mqtt.max_topic_levels < 1:
            self.issue("mqtt.max_topic_levels", "must be at least 1")
        if mqtt.keepalive_multiplier <= 0:
            self.issue("mqtt.keepalive_multiplier", "must be greater than 0")
        if mqtt.server_keepalive is not None and mqtt.server_keepalive > 65535:
            self.issue("mqtt.server_keepalive", "must be at most 65535 seconds")
        if mqtt.max_keepalive is not None and not 1 <= mqtt.max_keepalive <= 65535:
            self.issue("mqtt.max_keepalive", "must be in 1..65535 seconds (or infinity for no cap)")

    def check_proxy_trust(self, listener: model.TcpListener, key: str) -> None:
        from ..proxy_protocol import parse_cidr

        for index, cidr in enumerate(listener.proxy_protocol_trusted_cidrs):
            try:
                parse_cidr(cidr)
            except ValueError as exc:
                self.issue(f"{key}[{index}]", f"{cidr!r} is not an IP address or network: {exc}")
        if listener.proxy_protocol and not listener.proxy_protocol_trusted_cidrs:
            self.issue(key, "must list the load balancers' addresses (e.g. [\"192.0.2.10/32\"]) when "
                            "proxy_protocol = true: only they may send a PROXY header")

    def check_websocket(self, ws: model.WebsocketOptions, key: str) -> None:
        if not ws.mqtt_path.startswith("/"):
            self.issue(f"{key}.mqtt_path", f"must start with '/', not {ws.mqtt_path!r}")
        if not ws.supported_subprotocols:
            self.issue(f"{key}.supported_subprotocols", "must name at least one subprotocol")

    def check_ssl_options(self, options: SslOptions, key: str) -> None:
        """The files an ``ssl_options`` block names (resolved in place), then the rules of ``tls_rules``."""
        for name in ("certfile", "keyfile", "password_file", "cacertfile"):
            if getattr(options, name):
                self.check_file(options, name, f"{key}.{name}")
        if options.server_cacertfile:
            # May be missing (a Secret without ca.crt): resolved when it is there, kept as written otherwise.
            found = resolve_file(options.server_cacertfile)
            if found is not None:
                options.server_cacertfile = str(found)
        if options.crlfile:
            resolved = []
            for part in (p.strip() for p in options.crlfile.split(",")):
                found = resolve_file(part) if part else None
                if found is None:
                    self.issue(f"{key}.crlfile", f"file {part!r} not found ({self.searched(part)})")
                else:
                    resolved.append(str(found))
            options.crlfile = ",".join(resolved)
        if options.ocsp.enable_ocsp_stapling and options.ocsp.issuer_pem:
            self.check_file(options.ocsp, "issuer_pem", f"{key}.ocsp.issuer_pem")
        for problem in check_ssl_options(options):
            self.issue(f"{key}.{problem.field}", problem.message)

    def check_file(self, owner: Any, attr: str, key: str) -> None:
        """Resolve a relative path in place, or report it missing."""
        value = getattr(owner, attr)
        found = resolve_file(value)
        if found is None:
            self.issue(key, f"file {value!r} not found ({self.searched(value)})")
        else:
            setattr(owner, attr, str(found))

    @staticmethod
    def searched(value: str) -> str:
        if STATE_DIR_PLACEHOLDER in value:
            return f"that is {expand_path(value)}"
        if Path(value).expanduser().is_absolute():
            return "absolute path"
        return "looked in " + ", ".join(str(d) for d in search_dirs())

    def check_dashboard_login(self, dashboard: model.Dashboard) -> None:
        if dashboard.default_password_hash:
            problem = check_hash_format(dashboard.default_password_hash)
            if problem:
                self.issue("dashboard.default_password_hash", problem)
        if dashboard.session_timeout <= 0:
            self.issue("dashboard.session_timeout", "must be greater than 0")
        throttle = dashboard.login_throttle
        for name in ("max_failures_per_user", "max_failures_per_address"):
            if getattr(throttle, name) < 1:
                self.issue(f"dashboard.login_throttle.{name}", "must be at least 1")
        for name in ("initial_backoff", "max_backoff", "forget_after"):
            if getattr(throttle, name) <= 0:
                self.issue(f"dashboard.login_throttle.{name}", "must be greater than 0")
        if throttle.max_backoff < throttle.initial_backoff:
            self.issue("dashboard.login_throttle.max_backoff", "must not be shorter than initial_backoff")
        if dashboard.managed_by and not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?/[a-z0-9]([-.a-z0-9]*[a-z0-9])?",
                                                     dashboard.managed_by):
            self.issue("dashboard.managed_by", "must be <namespace>/<name> of the MQTTBroker resource")

    def check_bind_conflicts(self, binds: list[tuple[str, str, int]]) -> None:
        wildcard = {"", "0.0.0.0", "::"}
        for i, (key, host, port) in enumerate(binds):
            if port == 0:
                continue  # ephemeral: never collides
            for other_key, other_host, other_port in binds[:i]:
                if port == other_port and (host == other_host or host in wildcard or other_host in wildcard):
                    self.issue(key, f"port {port} is already bound by {other_key.rsplit('.bind', 1)[0]}")
                    break


def iter_listeners(config: BrokerConfig) -> Iterable[tuple[str, str, model.TcpListener]]:
    """(type, name, listener config) for every configured listener, enabled or not."""
    for kind in LISTENER_TYPES:
        for name, listener in getattr(config.listeners, kind).items():
            yield kind, name, listener
