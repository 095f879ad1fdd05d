"""The broker's typed configuration: what every other module reads.

The HOCON loader (``loader.py``) binds a parsed file onto these dataclasses, field by field: the field names
are the config keys (EMQX's names wherever EMQX has the setting), the annotations say how a value is read:

- ``Duration``: seconds as a float, written ``15s``, ``2h``, ``500ms`` or a bare number of seconds;
- ``ByteSize``: bytes as an int, written ``1MB``, ``64KB`` or a bare number;
- ``Limit``: an int, or ``infinity`` (bound to ``None``: no limit);
- ``Literal[...]``: one of the listed atoms, written bare (``verify = verify_peer``) or quoted;
- nested dataclasses are HOCON objects; ``dict[str, X]`` is an object of named X (``listeners.tcp.default``).

Unknown keys are errors. Defaults live here and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

Duration = Annotated[float, "duration"]
ByteSize = Annotated[int, "bytesize"]
Limit = Annotated["int | None", "limit"]

PeerCertAs = Literal["disabled", "cn", "dn", "crt", "pem", "md5"]


@dataclass
class MqttSettings:
    """``mqtt { ... }``: protocol limits and session behaviour (EMQX's ``mqtt`` root)."""

    max_packet_size: ByteSize = 1024 * 1024
    # Property blocks of a 5.0 packet (each block: a packet's own, a CONNECT's will): user properties at most,
    # and bytes at most. Checked while decoding; beyond them the connection ends with 0x95 packet too large.
    max_user_properties: int = 128
    max_properties_size: ByteSize = 64 * 1024
    # Topic filters in one SUBSCRIBE or UNSUBSCRIBE (counted while decoding; beyond: disconnected, 0x95). Decoding
    # a 1MB SUBSCRIBE of 250,000 filters held the event loop for seconds; some clients batch hundreds.
    max_topic_filters_per_packet: Limit = 500
    # The same three limits before CONNACK, when the peer is not authenticated yet: only its CONNECT is
    # parsed, under these stricter values (a larger will payload needs a larger connect_max_packet_size; a
    # max_packet_size below it wins).
    connect_max_packet_size: ByteSize = 64 * 1024
    connect_max_user_properties: int = 32
    connect_max_properties_size: ByteSize = 8 * 1024
    max_clientid_len: int = 65535
    max_topic_levels: int = 128
    max_qos_allowed: int = 2
    max_topic_alias: int = 65535
    retain_available: bool = True
    wildcard_subscription: bool = True
    shared_subscription: bool = True
    # How long a new connection may stay silent before its CONNECT arrives.
    idle_timeout: Duration = 15.0
    keepalive_multiplier: float = 1.5
    # 5.0 Server Keep Alive; None = use the client's value.
    server_keepalive: Limit = None
    # Cap on the keep-alive (mosquitto's max_keepalive): a 5.0 client asking for more, or for 0, is told the cap
    # in Server Keep Alive; a 3.1.1 client asking for more, or for 0, is refused ("identifier rejected"), since
    # 3.1.1 has no way to tell it. A client asking for less keeps its own. None = no cap. server_keepalive, when
    # set, still replaces every 5.0 client's value.
    max_keepalive: Limit = None
    # Subscriptions per client (SUBACK 0x97 quota exceeded beyond it); ``infinity`` for none.
    max_subscriptions: Limit = 1000
    max_inflight: int = 32
    retry_interval: Duration = 30.0
    max_awaiting_rel: Limit = 100
    await_rel_timeout: Duration = 300.0
    # Upper bound on the session expiry a 5.0 client may ask for; 3.1.1 persistent sessions use it as is.
    session_expiry_interval: Duration = 7200.0
    max_mqueue_len: Limit = 1000
    # When the queue is full: drop the oldest message (EMQX's behaviour) or refuse the newest.
    mqueue_drop_policy: Literal["drop_oldest", "drop_newest"] = "drop_oldest"
    mqueue_store_qos0: bool = True
    # Output waiting for a client that stopped reading; beyond it, QoS 0 messages to that client are dropped
    # (slow consumer; QoS 1/2 are bounded by max_inflight and max_mqueue_len instead).
    max_send_buffer: ByteSize = 16 * 1024 * 1024
    upgrade_qos: bool = False
    ignore_loop_deliver: bool = False
    response_information: str = ""
    peer_cert_as_username: PeerCertAs = "disabled"
    peer_cert_as_clientid: PeerCertAs = "disabled"
    # A client id whose session belongs to another identity (docs/security.md, "Tenancy"): the newcomer gets a
    # fresh session of its own (discard), is refused (refuse), or inherits the session (off).
    session_owner_check: Literal["discard", "refuse", "off"] = "discard"


@dataclass
class OcspOptions:
    """``ssl_options.ocsp { ... }``: OCSP stapling."""

    enable_ocsp_stapling: bool = False
    responder_url: str = ""
    issuer_pem: str = ""
    refresh_interval: Duration = 300.0
    refresh_http_timeout: Duration = 15.0


@dataclass
class SslOptions:
    """``ssl_options { ... }`` of an ssl/wss listener, with EMQX's names and defaults."""

    keyfile: str = ""
    certfile: str = ""
    cacertfile: str = ""
    # Wharf's: the CA(s) that issue the served certificate (cert-manager's ca.crt in the Secret). When set, a
    # certificate whose chain leads neither to these nor to ``cacertfile`` is refused, as the operator refuses it;
    # a missing file (a Secret without ca.crt) leaves ``cacertfile`` as the only anchors. docs/tls.md, "Reload".
    server_cacertfile: str = ""
    # Password of an encrypted keyfile. Never prompted for on a terminal.
    password: str = ""
    # File holding that password (first line); wins over ``password``. The operator mounts it from a Secret so
    # the password never appears in the rendered config.
    password_file: str = ""
    verify: Literal["verify_none", "verify_peer"] = "verify_none"
    fail_if_no_peer_cert: bool = False
    versions: list[Literal["tlsv1.3", "tlsv1.2", "tlsv1.1", "tlsv1"]] = field(
        default_factory=lambda: ["tlsv1.3", "tlsv1.2"])
    # OpenSSL names of TLS 1.2 and TLS 1.3 suites; empty = forward-secret AEAD suites only for TLS 1.2
    # (``context.DEFAULT_TLS12_CIPHERS``: ECDHE with AES-GCM or ChaCha20-Poly1305) and OpenSSL's TLS 1.3 suites.
    ciphers: list[str] = field(default_factory=list)
    # Maximum number of intermediate certificates between the peer and a trusted root.
    depth: int = 10
    handshake_timeout: Duration = 15.0
    honor_cipher_order: bool = True
    reuse_sessions: bool = True
    secure_renegotiate: bool = True
    # Client-initiated renegotiation (TLS <= 1.2) is a CPU lever for the client: refused unless enabled.
    client_renegotiation: bool = False
    partial_chain: bool = False
    # Wharf's: a re-read ``cacertfile`` that connected clients' certificates would no longer verify against is not
    # loaded (the listener keeps its material, says so in its status and log) until a reload through the admin
    # API names the new bundle's SHA-256 (``client_ca_sha256``). The operator sets it for caRef listeners.
    client_ca_guard: bool = False
    verify_peer_ext_key_usage: str = ""
    enable_crl_check: bool = False
    # Local CRL file(s) (PEM), checked in addition to the certificates' distribution points.
    crlfile: str = ""
    ocsp: OcspOptions = field(default_factory=OcspOptions)
    # How often the certificate, key, CA and CRL files are re-checked for changes (SIGHUP and the admin API
    # reload at once).
    reload_interval: Duration = 120.0
    # Accepted for EMQX compatibility; they have no meaning in this broker.
    hibernate_after: Duration = 5.0
    gc_after_handshake: bool = False
    log_level: str = "notice"


@dataclass
class WebsocketOptions:
    """``websocket { ... }`` of a ws/wss listener."""

    mqtt_path: str = "/mqtt"
    fail_if_no_subprotocol: bool = True
    supported_subprotocols: list[str] = field(default_factory=lambda: ["mqtt", "mqtt-v3.1.1", "mqtt-v5", "mqttv3.1"])


@dataclass
class TcpListener:
    """``listeners.tcp.<name> { ... }``"""

    enable: bool = True
    bind: str = "0.0.0.0:1883"
    max_connections: Limit = None
    # New connections per second accepted by this listener (token bucket); None = unlimited.
    max_conn_rate: Limit = None
    proxy_protocol: bool = False
    proxy_protocol_timeout: Duration = 3.0
    # The load balancers (CIDRs, or single addresses) whose connections may carry a PROXY header; anyone else is
    # closed before a byte is read. Required (non-empty) with ``proxy_protocol = true``.
    proxy_protocol_trusted_cidrs: list[str] = field(default_factory=list)
    mountpoint: str = ""
    # Server-to-client topic aliases for 5.0 clients that announce a Topic Alias Maximum. Off by default: most
    # clients never announce one, and some that do mishandle the aliases they get (docs/configuration.md).
    topic_alias_out: Literal["off", "on"] = "off"
    # Overrides of the global ``mqtt.peer_cert_as_*`` for this listener (ssl/wss only).
    peer_cert_as_username: PeerCertAs | None = None
    peer_cert_as_clientid: PeerCertAs | None = None


@dataclass
class SslListener(TcpListener):
    """``listeners.ssl.<name> { ... }``"""

    bind: str = "0.0.0.0:8883"
    ssl_options: SslOptions = field(default_factory=SslOptions)


@dataclass
class WsListener(TcpListener):
    """``listeners.ws.<name> { ... }``"""

    bind: str = "0.0.0.0:8083"
    websocket: WebsocketOptions = field(default_factory=WebsocketOptions)


@dataclass
class WssListener(WsListener):
    """``listeners.wss.<name> { ... }``"""

    bind: str = "0.0.0.0:8084"
    ssl_options: SslOptions = field(default_factory=SslOptions)


@dataclass
class Listeners:
    tcp: dict[str, TcpListener] = field(default_factory=dict)
    ssl: dict[str, SslListener] = field(default_factory=dict)
    ws: dict[str, WsListener] = field(default_factory=dict)
    wss: dict[str, WssListener] = field(default_factory=dict)


@dataclass
class PskAuthentication:
    """``psk_authentication { ... }`` (EMQX): identities and secrets for PSK cipher suites."""

    enable: bool = False
    # Lines of ``identity:secret``.
    init_file: str = ""
    separator: str = ":"


@dataclass
class CrlCache:
    """``crl_cache { ... }`` (EMQX): CRLs fetched from the certificates' distribution points."""

    refresh_interval: Duration = 900.0
    http_timeout: Duration = 15.0
    capacity: int = 100


@dataclass
class PasswordFileAuthn:
    """``authentication.password_file { ... }``: users with salted slow hashes, one ``user:hash`` a line
    (``python -m wharf_broker.authn.passwd``)."""

    enable: bool = False
    path: str = ""
    # The file's content digest is re-checked this often (SIGHUP re-reads at once); a bad file keeps the old users.
    reload_interval: Duration = 10.0
    # Password hashes are checked on this many threads of the authenticator's own (never on the event loop);
    # at most ``hash_queue_size`` checks wait for them, more CONNECTs are refused at once (0x89 server busy).
    hash_workers: int = 2
    hash_queue_size: int = 32


@dataclass
class HttpAuthn:
    """``authentication.http { ... }``: ask an HTTP service (POST JSON, answer ``{"result": "allow|deny|ignore"}``)."""

    enable: bool = False
    url: str = ""
    # Whole-request timeout (EMQX: ``request_timeout``); a timeout or error means ``ignore``.
    request_timeout: Duration = 5.0
    connect_timeout: Duration = 2.0
    # Answers (allow and deny) are kept this long, for at most ``cache_max_size`` credentials; 0 = no cache.
    cache_ttl: Duration = 60.0
    cache_max_size: int = 10000
    # At most this many requests in flight; more CONNECTs wait.
    pool_size: int = 8


@dataclass
class LoginThrottle:
    """``authentication.login_throttle { ... }``: back off failed logins per source address and per user name.

    After ``allowed_failures`` failed logins (bad user name or password) of one address or one user name, the
    next login of that address / user name must wait ``initial_backoff``, then twice as long after each further
    failure, at most ``max_backoff``. While it waits, its CONNECTs are refused at once (0x9F connection rate
    exceeded) without checking the password. A success clears the address's and the user name's record; a
    record without failures for ``forget_after`` is dropped. At most ``max_tracked`` records of each kind."""

    enable: bool = True
    by_address: bool = True
    by_username: bool = True
    allowed_failures: int = 3
    # Logins checked at the same time at most for an address / a user name that has failed lately; more are
    # refused like a backoff (a burst of wrong passwords is otherwise all hashed before its next failure is known).
    # Keys without a recent failure are not capped (a fleet behind one address reconnects all at once).
    max_pending_checks: int = 1
    initial_backoff: Duration = 1.0
    # A throttled CONNECT is answered after this long (at most the rest of its backoff), so that a client
    # waiting for its CONNACK cannot turn refusals into a reconnect loop; 0 answers at once.
    refusal_delay: Duration = 1.0
    max_backoff: Duration = 60.0
    forget_after: Duration = 600.0
    max_tracked: int = 100000


@dataclass
class Authentication:
    """``authentication { ... }``: who may connect."""

    allow_anonymous: bool = True
    login_throttle: LoginThrottle = field(default_factory=LoginThrottle)
    # Authenticators asked in this order (EMQX chain: ignore -> next, allow/deny decides).
    chain: list[Literal["password_file", "http"]] = field(default_factory=lambda: ["password_file", "http"])
    password_file: PasswordFileAuthn = field(default_factory=PasswordFileAuthn)
    http: HttpAuthn = field(default_factory=HttpAuthn)


@dataclass
class AclFile:
    """``authorization.file { ... }``: rules in an ``acl.conf``-like file (``docs/configuration.md``)."""

    enable: bool = False
    path: str = ""
    reload_interval: Duration = 10.0


@dataclass
class AuthzCache:
    """``authorization.cache { ... }`` (EMQX): per-client decisions kept until the ACL changes."""

    enable: bool = True
    max_size: int = 32
    ttl: Duration = 60.0


@dataclass
class Authorization:
    """``authorization { ... }``: what a client may publish and subscribe to."""

    # The decision when no rule matches (EMQX's name and default; the operator renders ``deny``).
    no_match: Literal["allow", "deny"] = "allow"
    # What a refused PUBLISH costs the client besides the refusal: nothing, or the connection.
    deny_action: Literal["ignore", "disconnect"] = "ignore"
    cache: AuthzCache = field(default_factory=AuthzCache)
    file: AclFile = field(default_factory=AclFile)


@dataclass
class FlappingDetect:
    """``flapping_detect { ... }`` (EMQX): a client id that connects ``max_count`` times within ``window_time``
    is refused (CONNACK "banned") for ``ban_time``."""

    enable: bool = False
    max_count: int = 15
    window_time: Duration = 60.0
    ban_time: Duration = 300.0
    # Client ids tracked at most (oldest forgotten first), so a flood of random ids cannot grow memory.
    max_tracked: int = 100000
    # Also count CONNECTs per source address (any client id, empty ones included): an address that connects
    # ``address_max_count`` times within ``window_time`` is banned for ``ban_time``. Higher than ``max_count``
    # since many clients may share one address (NAT); 0 turns it off.
    address_max_count: int = 60


@dataclass
class Retainer:
    """``retainer { ... }`` (EMQX's names): limits of the retained message store.

    A retained message that would exceed them is not stored: a 5.0 QoS 1/2 publisher hears 0x97 quota exceeded
    and the message is not routed; a QoS 0 or 3.1.1 publisher cannot be told, so the message is routed as a
    plain message and only counted. Replacing a topic's retained message and clearing it (empty payload) work
    at the limit."""

    max_retained_messages: Limit = 100000
    max_payload_size: ByteSize = 1024 * 1024
    # Payload and topic bytes of all retained messages together.
    max_retained_bytes: ByteSize = 256 * 1024 * 1024


@dataclass
class DashboardHttp:
    bind: str = "127.0.0.1:18083"


@dataclass
class DashboardListeners:
    http: DashboardHttp = field(default_factory=DashboardHttp)


@dataclass
class DashboardLoginThrottle:
    """``dashboard.login_throttle { ... }``: exponential backoff after failed Dashboard logins."""

    # Failures of one user name from one address before it must wait ``initial_backoff`` (doubling per failure).
    max_failures_per_user: int = 5
    # Failures from one address, whatever the user names, before the whole address must wait (token logins take
    # any user name, so guessing must be throttled per address too). Higher, so one name's failures do not block
    # another name.
    max_failures_per_address: int = 20
    initial_backoff: Duration = 1.0
    # The longest wait: a correct login is never refused for longer than this.
    max_backoff: Duration = 60.0
    # Failures are forgotten this long after the last one.
    forget_after: Duration = 900.0


@dataclass
class Dashboard:
    """``dashboard { ... }``: the admin API and the web Dashboard on aiohttp."""

    enable: bool = True
    listeners: DashboardListeners = field(default_factory=DashboardListeners)
    # Bearer token for the API. Required when bound to anything but loopback. ``token_file`` wins over
    # ``token`` (the operator mounts it from a Secret).
    token: str = ""
    token_file: str = ""
    # Web Dashboard login besides the token (EMQX's names). No password and no hash: only the token logs in.
    default_username: str = "admin"
    default_password: str = ""
    # ``pbkdf2_sha256$<iterations>$<salt>$<hash>`` (``python -m wharf_broker.dashboard.passwords``); wins over
    # ``default_password``.
    default_password_hash: str = ""
    # Idle time after which a Dashboard session ends.
    session_timeout: Duration = 1800.0
    # Where certificates, keys and CAs uploaded through the Dashboard are written (relative: to the working
    # directory), one folder per listener.
    upload_dir: str = "data/certs"
    # "<namespace>/<name>" of the MQTTBroker resource when the operator runs this broker: the Dashboard then
    # shows the fields that resource owns read-only.
    managed_by: str = ""
    login_throttle: DashboardLoginThrottle = field(default_factory=DashboardLoginThrottle)


@dataclass
class Prometheus:
    """``prometheus { ... }``: a read-only HTTP listener for Prometheus. It serves ``GET /metrics`` (and ``HEAD``)
    and nothing else, with no credential: it can change nothing and shows nothing but the metrics (which hold no
    secrets), so a scraper needs no token. ``/metrics`` on the admin API keeps working with the admin token."""

    enable: bool = False
    bind: str = "0.0.0.0:9184"


@dataclass
class Log:
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = "text"


@dataclass
class Node:
    name: str = "wharf@127.0.0.1"
    # Prefer uvloop when it is installed.
    event_loop: Literal["auto", "asyncio", "uvloop"] = "auto"


@dataclass
class ClusterNatsTls:
    """``cluster.nats.tls { ... }``: TLS from this node to the NATS servers."""

    enable: bool = False
    cacertfile: str = ""
    certfile: str = ""
    keyfile: str = ""
    # Name checked against the NATS server's certificate (empty: the host of the server URL).
    server_name: str = ""


@dataclass
class ClusterNats:
    """``cluster.nats { ... }``: the NATS (JetStream) servers this node joins the cluster through."""

    servers: list[str] = field(default_factory=lambda: ["nats://127.0.0.1:4222"])
    tls: ClusterNatsTls = field(default_factory=ClusterNatsTls)
    # A NATS credentials file (JWT + NKey seed); empty for none.
    credentials: str = ""
    connect_timeout: Duration = 5.0


@dataclass
class Cluster:
    """``cluster { ... }``: run as one node of a cluster on NATS. Off: a standalone broker, no NATS needed."""

    enable: bool = False
    nats: ClusterNats = field(default_factory=ClusterNats)
    # Replicas of the JetStream stream and key-value buckets (at most the number of NATS servers).
    replicas: int = 3
    # How long QoS 1/2 messages stay in the JetStream stream.
    stream_max_age: Duration = 3600.0
    # A node's interest entry lives this long without a refresh (a dead node's interest then disappears).
    interest_ttl: Duration = 30.0
    # How long a node waits for the previous node of a session to hand it over.
    takeover_timeout: Duration = 5.0
    # Wait this long for the backplane to accept a QoS 1/2 message before answering the publisher with an error.
    publish_timeout: Duration = 5.0


@dataclass
class DurableStorage:
    """``durable_storage { ... }``: keep persistent sessions, their queued and in-flight messages, retained
    messages and delayed wills on local disk across restarts (standalone brokers; see ``docs/durability.md``)."""

    enable: bool = False
    # Directory of the store (``wharf.db``); empty: ``data`` in the state directory ($WHARF_HOME, else
    # $XDG_STATE_HOME/wharf, else ~/.local/state/wharf). Relative paths are under $WHARF_HOME, else the working
    # directory; ``${WHARF_STATE_DIR}`` stands for the state directory.
    data_dir: str = ""
    # SQLite's ``synchronous``: ``full`` fsyncs every group commit (an acknowledged message survives a power
    # loss); ``normal`` survives a crash or SIGKILL of the broker but not a power loss of the node.
    synchronous: Literal["full", "normal"] = "full"


@dataclass
class SysEventMessages:
    """``sys_topics.sys_event_messages { ... }`` (EMQX): which client events are published under ``$SYS``."""

    client_connected: bool = True
    client_disconnected: bool = True


@dataclass
class SysTopics:
    """``sys_topics { ... }`` (EMQX's layout): ``$SYS/brokers/<node>/...`` published by every node for itself."""

    # version, sysdescr, $SYS/brokers (retained), stats/... and metrics/... this often; 0 = never.
    sys_msg_interval: Duration = 60.0
    # uptime and datetime this often; 0 = never.
    sys_heartbeat_interval: Duration = 30.0
    sys_event_messages: SysEventMessages = field(default_factory=SysEventMessages)


@dataclass
class BrokerConfig:
    """The whole config file."""

    node: Node = field(default_factory=Node)
    log: Log = field(default_factory=Log)
    mqtt: MqttSettings = field(default_factory=MqttSettings)
    listeners: Listeners = field(default_factory=Listeners)
    authentication: Authentication = field(default_factory=Authentication)
    authorization: Authorization = field(default_factory=Authorization)
    flapping_detect: FlappingDetect = field(default_factory=FlappingDetect)
    retainer: Retainer = field(default_factory=Retainer)
    psk_authentication: PskAuthentication = field(default_factory=PskAuthentication)
    crl_cache: CrlCache = field(default_factory=CrlCache)
    dashboard: Dashboard = field(default_factory=Dashboard)
    prometheus: Prometheus = field(default_factory=Prometheus)
    cluster: Cluster = field(default_factory=Cluster)
    durable_storage: DurableStorage = field(default_factory=DurableStorage)
    sys_topics: SysTopics = field(default_factory=SysTopics)
