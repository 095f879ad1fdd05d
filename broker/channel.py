"""One client's MQTT protocol state: CONNECT, PUBLISH and its acknowledgements, SUBSCRIBE, ... .

The connection feeds decoded packets to ``handle``; handlers raise ``ProtocolViolation`` for anything the
client must be disconnected for (the connection then calls ``abort``). Outgoing packets go through the
connection's coalescing writer. The broker is reached only through its application interface (router,
sessions, retained store, wills).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import time
from typing import TYPE_CHECKING, Any, NoReturn

from .auth import AuthResult, ConnectInfo, identity_from_certificate, peer_identity
from .authz import guard_for
from .limits import exceeded
from .mqtt import reason_codes as rc
from .mqtt.frame import (PINGRESP_BYTES, encode_ack, encode_connack, encode_disconnect, encode_puback,
                         encode_pubcomp, encode_publish_parts, encode_pubrec, encode_pubrel, encode_suback,
                         encode_unsuback)
from .mqtt.packets import (AUTH, CONNACK, CONNECT, DISCONNECT, MQTT_5, NAMES, PINGREQ, PINGRESP, PUBACK,
                           PUBCOMP, PUBLISH, PUBREC, PUBREL, SUBACK, SUBSCRIBE, UNSUBACK, UNSUBSCRIBE, Connect,
                           Disconnect, Properties, PubAck, Publish, Subscribe, Unsubscribe)
from .mqtt.topic import has_wildcard, parse_shared, valid_topic_filter
from .router import Message, Subscription
from .sys_topics import is_sys_topic
from .tasks import spawn
from .tenancy import fill_mountpoint, session_owner

if TYPE_CHECKING:
    from .authz import ClientAcl
    from .broker import Broker
    from .connection import Connection
    from .mqtt.packets import Will
    from .session import Session

log = logging.getLogger("wharf_broker.channel")

# 5.0 PUBLISH properties a subscriber receives as the publisher sent them.
_PASSED_THROUGH = ("payload_format_indicator", "content_type", "response_topic", "correlation_data",
                   "user_property")
# Why the server ended a connection, in EMQX's words (for the $SYS disconnected event).
_KICK_REASONS = {rc.SESSION_TAKEN_OVER: "takenover", rc.KEEP_ALIVE_TIMEOUT: "keepalive_timeout",
                 rc.SERVER_SHUTTING_DOWN: "shutdown"}
_NEVER_EXPIRES = 0xFFFFFFFF


class ProtocolViolation(Exception):
    """The client broke the protocol; it is disconnected with ``reason_code`` (5.0) or just closed."""

    def __init__(self, reason_code: int, message: str) -> None:
        super().__init__(message)
        self.reason_code = reason_code


class _Refused(Exception):
    """A CONNECT step's refusal: answered with a CONNACK carrying ``reason_code`` (and ``reason`` in 5.0)."""

    def __init__(self, reason_code: int, reason: str) -> None:
        super().__init__(reason)
        self.reason_code = reason_code
        self.reason = reason


class Channel:
    __slots__ = ("broker", "connection", "settings", "version", "v5", "client_id", "username", "session",
                 "connected", "connect_received", "will", "keepalive", "send_window", "client_max_packet",
                 "topic_aliases", "aliases_out", "aliases_out_max", "session_expiry", "problem_information",
                 "connected_at", "mountpoint", "acl", "owner", "_disconnected", "_deferred_acks", "_sent", "_loop")

    def __init__(self, broker: "Broker", connection: "Connection") -> None:
        self.broker = broker
        self.connection = connection
        self.settings = broker.config.mqtt
        self.version = 4
        self.v5 = False
        self.client_id: str | None = None
        self.username: str | None = None
        self.session: Session | None = None
        self.connected = False  # CONNACK accepted sent, not yet terminated
        self.connect_received = False
        self.will: Will | None = None
        self.keepalive = 0
        self.send_window = self.settings.max_inflight or 65535
        self.client_max_packet: int | None = None
        self.topic_aliases: dict[int, str] | None = None  # inbound: alias -> topic
        # Outbound (5.0, when the client allows them): topic -> alias, first come first served.
        self.aliases_out: dict[str, int] | None = None
        self.aliases_out_max = 0
        self.session_expiry = 0.0
        self.problem_information = True
        self.connected_at: float | None = None
        # The listener's mountpoint with placeholders filled in: prefixed to the client's topics inside the
        # broker, stripped again on the way out.
        self.mountpoint = ""
        # This client's ACL view (``authz.ClientAcl``), None when authorization cannot refuse anything.
        self.acl: ClientAcl | None = None
        # The identity this client's session belongs to (``tenancy.session_owner``).
        self.owner: tuple[str, ...] | None = None
        self._disconnected = False
        # PUBACK/PUBREC waiting for a commit or the cluster backplane: (future, kind, packet id), in PUBLISH order.
        self._deferred_acks: collections.deque[tuple[asyncio.Future[int], int, int]] | None = None
        self._sent = broker.metrics.sent.labels()
        self._loop = broker.loop

    # --------------------------------------------------------------------------------------------- dispatch

    # ``packet`` is Any: the branches dispatch on ``packet.type`` (see ``frame.encode``).
    def handle(self, packet: Any) -> bool:
        """Process one packet. Returns True when processing must wait (CONNECT under asynchronous auth)."""
        ptype = packet.type
        if ptype == PUBLISH:
            if not self.connected:
                raise ProtocolViolation(rc.PROTOCOL_ERROR, "PUBLISH before CONNECT")
            self.handle_publish(packet)
            return False
        if ptype == CONNECT:
            return self.handle_connect(packet)
        if not self.connected:
            raise ProtocolViolation(rc.PROTOCOL_ERROR, f"{NAMES[ptype]} before CONNECT")
        if ptype == PUBACK:
            self.handle_puback(packet)
        elif ptype == PUBREC:
            self.handle_pubrec(packet)
        elif ptype == PUBREL:
            self.handle_pubrel(packet)
        elif ptype == PUBCOMP:
            self.handle_pubcomp(packet)
        elif ptype == PINGREQ:
            self.handle_pingreq(packet)
        elif ptype == SUBSCRIBE:
            self.handle_subscribe(packet)
        elif ptype == UNSUBSCRIBE:
            self.handle_unsubscribe(packet)
        elif ptype == DISCONNECT:
            self.handle_disconnect(packet)
        elif ptype == AUTH:
            self.handle_auth(packet)
        else:  # CONNACK, SUBACK, UNSUBACK, PINGRESP: server-to-client only
            raise ProtocolViolation(rc.PROTOCOL_ERROR, f"client sent {NAMES[ptype]}")
        return False

    # ---------------------------------------------------------------------------------------------- CONNECT
    #
    # CONNECT is a list of small steps run in order by two short drivers: ``handle_connect`` up to authentication
    # and ``_connect_authenticated`` after it (an authenticator may answer later; the connection holds the
    # client's next packets meanwhile). A step returns what it found, or sets the channel attributes it
    # negotiates, or raises ``_Refused``: the driver then answers with a refusing CONNACK and closes.

    def handle_connect(self, packet: Connect) -> bool:
        """Process a CONNECT. True when authentication goes on asynchronously (``_auth_done`` finishes it)."""
        if self.connect_received:
            raise ProtocolViolation(rc.PROTOCOL_ERROR, "second CONNECT")
        self.connect_received = True
        self.connection.connect_arrived()
        try:
            self._check_protocol(packet)
            self._check_will(packet.will)
            info = self._resolve_identity(packet)
            self._check_banned(info)
        except _Refused as refused:
            return self._refuse(refused.reason_code, refused.reason)
        return self._authenticate(packet, info)

    def _connect_authenticated(self, packet: Connect, info: ConnectInfo, result: AuthResult) -> None:
        """The steps after authentication, ending in the CONNACK."""
        try:
            self._check_authenticated(info, result)
            client_id = self._assign_client_id(packet, info.client_id)
            self._authorize(info, result, client_id)
            self._authorize_will(packet)
            ack_props: Properties = {}
            if self.v5 and client_id != info.client_id:
                ack_props["assigned_client_identifier"] = client_id
            ack_props.update(self._negotiate(packet))
            self._mount(info, result)
            session, present, attach_props = self._attach(packet)
        except _Refused as refused:
            self._refuse(refused.reason_code, refused.reason)
            return
        ack_props.update(attach_props)
        self._accept(packet, session, present, ack_props)

    def _check_protocol(self, packet: Connect) -> None:
        """The protocol version and what this broker refuses outright: enhanced authentication, a client id
        beyond ``mqtt.max_clientid_len``, a 3.1.1 keep-alive beyond ``mqtt.max_keepalive``."""
        self.version = packet.version
        self.v5 = v5 = packet.version == MQTT_5
        settings = self.settings
        if v5:
            props = packet.properties
            self.problem_information = props.get("request_problem_information", 1) == 1
            if "authentication_method" in props:
                raise _Refused(rc.BAD_AUTHENTICATION_METHOD, "enhanced authentication is not supported")
        if len(packet.client_id) > settings.max_clientid_len:
            exceeded("max_clientid_len")
            raise _Refused(rc.CLIENT_IDENTIFIER_NOT_VALID, "client id too long")
        max_keepalive = settings.max_keepalive
        if max_keepalive is not None and not v5 and (packet.keepalive == 0 or packet.keepalive > max_keepalive):
            # 3.1.1 cannot be told another keep-alive: refused as mosquitto 2 does ("identifier rejected").
            exceeded("max_keepalive")
            log.info("client %r from %s refused: keep-alive %ds is beyond mqtt.max_keepalive %ds", packet.client_id,
                     self.connection.peer_text, packet.keepalive, max_keepalive)
            raise _Refused(rc.CLIENT_IDENTIFIER_NOT_VALID, "keep-alive beyond mqtt.max_keepalive")

    def _check_will(self, will: Will | None) -> None:
        """A will this broker could not publish is refused with the CONNECT."""
        if will is None:
            return
        settings = self.settings
        if not will.topic or has_wildcard(will.topic):
            raise _Refused(rc.TOPIC_NAME_INVALID, "invalid will topic")
        if will.qos > settings.max_qos_allowed:
            raise _Refused(rc.QOS_NOT_SUPPORTED, "will QoS not supported")
        if will.retain and not settings.retain_available:
            raise _Refused(rc.RETAIN_NOT_SUPPORTED, "retained messages are not supported")
        if will.properties.get("payload_format_indicator") == 1 and not _is_utf8(will.payload):
            raise _Refused(rc.PAYLOAD_FORMAT_INVALID, "will payload is not UTF-8")

    def _resolve_identity(self, packet: Connect) -> ConnectInfo:
        """Who the client is: its CONNECT's claims, overridden by its certificate (``peer_cert_as_username`` /
        ``peer_cert_as_clientid``), its pre-shared key, or a load balancer's word for its certificate."""
        transport = self.connection.transport
        listener = self.connection.listener
        identity = peer_identity(transport) if transport is not None else None
        username = packet.username
        client_id = packet.client_id
        try:
            cert_username = identity_from_certificate(identity, listener.peer_cert_as_username)
            cert_client_id = identity_from_certificate(identity, listener.peer_cert_as_clientid)
        except ValueError as error:
            raise _Refused(rc.BAD_USER_NAME_OR_PASSWORD, f"client certificate refused: {error}") from None
        if cert_username is not None:
            username = cert_username
        if cert_client_id is not None:
            client_id = cert_client_id
        psk_identity = getattr(identity, "psk_identity", None)
        if psk_identity is not None:
            username = psk_identity  # authenticated by the pre-shared key (mosquitto's use_identity_as_username)
        cert_cn = getattr(identity, "cn", None) if identity is not None else None
        if cert_cn is None and transport is not None:
            # No certificate here, but a load balancer vouches for one in a PROXY v2 TLV.
            cert_cn = transport.get_extra_info("proxy_ssl_cn")
            if cert_cn is not None:
                if listener.peer_cert_as_username == "cn" and cert_username is None:
                    username = cert_cn
                if listener.peer_cert_as_clientid == "cn" and cert_client_id is None:
                    client_id = cert_cn
        return ConnectInfo(client_id, username, packet.password, listener.id, self.connection.peer,
                           packet.version, identity, cert_cn, psk_identity)

    def _check_banned(self, info: ConnectInfo) -> None:
        flapping = self.broker.access.flapping
        if flapping.enabled and flapping.refuses(info.client_id, self.connection.peer):
            self.broker.access.authn["banned"].inc()
            log.info("client %r from %s refused: banned for flapping", info.client_id, self.connection.peer_text)
            raise _Refused(rc.BANNED, "banned for flapping")

    def _authenticate(self, packet: Connect, info: ConnectInfo) -> bool:
        """Run the authentication chain: at once when no hook can make it wait (or the pre-shared key already
        authenticated the client), else in a task (True: the connection waits for ``_auth_done``)."""
        chain = self.broker.auth
        if not chain.hooks or info.psk_identity is not None:
            self._connect_authenticated(packet, info, chain.fallback(info))
            return False
        task = spawn(chain.authenticate(info))
        task.add_done_callback(lambda done: self._auth_done(packet, info, done))
        return True

    def _auth_done(self, packet: Connect, info: ConnectInfo, task: asyncio.Task[AuthResult]) -> None:
        if self._disconnected:
            return
        if task.cancelled():
            self.connection.close()
            return
        error = task.exception()
        if error is not None:
            log.warning("authentication of client %r from %s failed: %r", info.client_id,
                        self.connection.peer_text, error)
            self.broker.access.authn["error"].inc()
            self._refuse(rc.UNSPECIFIED_ERROR, "authentication failed")
        else:
            try:
                self._connect_authenticated(packet, info, task.result())
            except Exception:  # noqa: BLE001 - one client's failure must not escape the callback
                log.exception("error while connecting client %r", info.client_id)
                self.connection.close()
                return
        self.connection.resume_processing()

    def _check_authenticated(self, info: ConnectInfo, result: AuthResult) -> None:
        if not result.allowed:
            self.broker.access.authn["deny"].inc()
            log.info("client %r from %s refused: %s", info.client_id, self.connection.peer_text,
                     result.reason or "not authorized")
            raise _Refused(result.reason_code or rc.NOT_AUTHORIZED, result.reason or "not authorized")

    def _assign_client_id(self, packet: Connect, client_id: str) -> str:
        """The client's id, or one of the broker's making for an empty one (which 3.1.1 allows only with a clean
        session)."""
        if client_id:
            return client_id
        if not self.v5 and not packet.clean_start:
            raise _Refused(rc.CLIENT_IDENTIFIER_NOT_VALID, "empty client id needs a clean session")
        return "wharf-" + os.urandom(8).hex()

    def _authorize(self, info: ConnectInfo, result: AuthResult, client_id: str) -> None:
        """The client is in: its names and its ACL view."""
        access = self.broker.access
        self.client_id = client_id
        self.username = info.username
        access.authn["anonymous" if result.attributes.get("anonymous") else "allow"].inc()
        self.acl = access.client_acl(info.username, client_id, info.cert_common_name, info.peer)

    def _authorize_will(self, packet: Connect) -> None:
        """A will its client may not publish (the ACL, or $SYS) is dropped; the client still connects."""
        will = packet.will
        if will is None:
            return
        if self.acl is not None and not self.acl.may_publish(will.topic):
            log.info("client %r: will on %r dropped: not authorized", self.client_id, will.topic)
            packet.will = None
        elif is_sys_topic(will.topic):
            log.info("client %r: will on %r dropped: $SYS is reserved for the broker", self.client_id, will.topic)
            self.broker.metrics.dropped("sys_topic").value += 1
            packet.will = None

    def _negotiate(self, packet: Connect) -> Properties:
        """Session expiry, flow-control limits and keep-alive; returns what the CONNACK tells the client."""
        ack_props = self._negotiate_session_expiry(packet)
        if self.v5:
            ack_props.update(self._negotiate_limits(packet.properties))
        ack_props.update(self._negotiate_keepalive(packet))
        return ack_props

    def _negotiate_session_expiry(self, packet: Connect) -> Properties:
        """Session lifetime: 5.0 asks for one (capped); 3.1.1 persistent sessions get the configured one."""
        cap = self.settings.session_expiry_interval
        ack_props: Properties = {}
        if self.v5:
            requested = packet.properties.get("session_expiry_interval", 0)
            expiry = cap if requested == _NEVER_EXPIRES else min(float(requested), cap)
            if expiry != requested:
                ack_props["session_expiry_interval"] = int(expiry)
        else:
            expiry = 0.0 if packet.clean_start else cap
        self.session_expiry = expiry
        return ack_props

    def _negotiate_limits(self, props: Properties) -> Properties:
        """5.0: the client's receive maximum, packet size and topic aliases; the broker's, and what it lacks."""
        settings = self.settings
        ack_props: Properties = {}
        receive_maximum = props.get("receive_maximum", 65535)
        self.send_window = min(settings.max_inflight or 65535, receive_maximum)
        self.client_max_packet = props.get("maximum_packet_size")
        if self.connection.listener.topic_alias_out:
            self.aliases_out_max = props.get("topic_alias_maximum", 0)
        if settings.max_topic_alias:
            ack_props["topic_alias_maximum"] = min(settings.max_topic_alias, 65535)
        if settings.max_awaiting_rel is not None:
            ack_props["receive_maximum"] = max(1, min(settings.max_awaiting_rel, 65535))
        ack_props["maximum_packet_size"] = settings.max_packet_size
        if settings.max_qos_allowed < 2:
            ack_props["maximum_qos"] = settings.max_qos_allowed
        if not settings.retain_available:
            ack_props["retain_available"] = 0
        if not settings.wildcard_subscription:
            ack_props["wildcard_subscription_available"] = 0
        if not settings.shared_subscription:
            ack_props["shared_subscription_available"] = 0
        if props.get("request_response_information") == 1 and settings.response_information:
            ack_props["response_information"] = settings.response_information
        return ack_props

    def _negotiate_keepalive(self, packet: Connect) -> Properties:
        """The client's keep-alive, or (5.0) the server's: ``mqtt.server_keepalive``, or the cap of
        ``mqtt.max_keepalive``."""
        settings = self.settings
        keepalive = packet.keepalive
        ack_props: Properties = {}
        if self.v5 and settings.server_keepalive is not None:
            keepalive = settings.server_keepalive
            ack_props["server_keep_alive"] = keepalive
        elif self.v5 and settings.max_keepalive is not None and (keepalive == 0 or keepalive > settings.max_keepalive):
            keepalive = settings.max_keepalive
            ack_props["server_keep_alive"] = keepalive
        self.keepalive = keepalive
        return ack_props

    def _mount(self, info: ConnectInfo, result: AuthResult) -> None:
        """The listener's mountpoint with this client's placeholders filled in, and the identity its session
        belongs to."""
        listener = self.connection.listener
        if listener.mountpoint:
            mountpoint, refused = fill_mountpoint(listener.mountpoint, self.client_id or "", info.username)
            if refused is not None:
                self._refuse_placeholder(refused, info)
            self.mountpoint = mountpoint
        self.owner = session_owner(info.username, self._username_vouched(info, result), info.peer_identity,
                                   info.cert_common_name, self.mountpoint)

    def _attach(self, packet: Connect) -> tuple[Session, bool, Properties]:
        """Take the will and the session (a new one, this client's previous one, or one taken over from another
        connection): (session, whether it was there before, what the CONNACK says about it)."""
        if packet.will is not None:
            self.will = packet.will
            if self.mountpoint:
                self.will.topic = self.mountpoint + self.will.topic
        assert self.client_id is not None  # set by _authorize
        session, present = self.broker.attach(self, self.client_id, packet.clean_start)
        if session is None:  # the session belongs to another identity (session_owner_check = refuse)
            self.will = None
            raise _Refused(rc.CLIENT_IDENTIFIER_NOT_VALID, "client id in use by another identity")
        ack_props: Properties = {}
        if session.guest and self.session_expiry:  # another identity's client id: a session of its own, ending with it
            self.session_expiry = 0.0
            if self.v5:
                ack_props["session_expiry_interval"] = 0
        return session, present, ack_props

    def _accept(self, packet: Connect, session: Session, present: bool, ack_props: Properties) -> None:
        """Connected: the CONNACK, keep-alive, a resumed session's pending messages and the $SYS event."""
        if present:
            self.guard_subscriptions(session)
        session.acl = self.acl
        self.session = session
        session.expiry_interval = self.session_expiry
        self.connected = True
        self.connected_at = time.time()
        self.connection.write(encode_connack(present, rc.SUCCESS, ack_props, self.version))
        keepalive = self.keepalive
        self.connection.start_keepalive(keepalive * self.settings.keepalive_multiplier if keepalive else 0)
        if present:
            session.resume()
        events = self.broker.sys_events
        if events is not None:
            events.client_connected(self, packet.clean_start)

    def _refuse_placeholder(self, placeholder: str, info: ConnectInfo) -> NoReturn:
        """The listener's mountpoint would take this client's ``placeholder`` value, which could widen it."""
        self.broker.owner_check.mountpoint_refused[placeholder].inc()
        log.warning("client %r from %s refused: its %s cannot fill the mountpoint %r (empty, or holding + # / "
                    "or NUL)", info.client_id, self.connection.peer_text, placeholder,
                    self.connection.listener.mountpoint)
        if placeholder == "clientid":
            raise _Refused(rc.CLIENT_IDENTIFIER_NOT_VALID, "client id not usable in this listener's mountpoint")
        raise _Refused(rc.NOT_AUTHORIZED, "user name not usable in this listener's mountpoint")

    def _username_vouched(self, info: ConnectInfo, result: AuthResult) -> bool:
        """Whether the username is more than a claim: an authenticator accepted it, or the client's certificate
        (or the load balancer's word for it) or pre-shared key yielded it."""
        if info.username is None:
            return False
        if not result.attributes.get("anonymous") or info.psk_identity is not None:
            return True
        mode = self.connection.listener.peer_cert_as_username
        if mode == "disabled":
            return False
        try:
            from_certificate = identity_from_certificate(info.peer_identity, mode)
        except ValueError:
            from_certificate = None
        if from_certificate is None and mode == "cn":
            from_certificate = info.cert_common_name
        return from_certificate == info.username

    def guard_subscriptions(self, session: Session) -> None:
        """Resumed subscriptions get this client's read checks: its ACL may not be the one they were granted
        under (another identity's session under ``session_owner_check = off``, another address)."""
        for subscription in session.subscriptions.values():
            subscription.guard = guard_for(self.acl, self.mountpoint, subscription.topic_filter)

    def _refuse(self, reason_code: int, reason: str) -> bool:
        """Answer the CONNECT with a refusal and close."""
        props = {"reason_string": reason} if self.v5 and self.problem_information else None
        code = reason_code if self.v5 else rc.connack_v3(reason_code)
        self.connection.write(encode_connack(False, code, props, self.version))
        self.connection.close()
        return False

    # ---------------------------------------------------------------------------------------------- PUBLISH

    def handle_publish(self, packet: Publish) -> None:  # noqa: C901 - the PUBLISH hot path, kept in one frame
        topic = packet.topic
        properties = packet.properties
        settings = self.settings
        expires_at = None
        if properties is not None:
            topic, properties, expires_at = self._publish_properties(topic, properties)
        if not topic or "+" in topic or "#" in topic:
            raise ProtocolViolation(rc.TOPIC_NAME_INVALID, f"invalid topic name {topic!r}")
        if topic.count("/") >= settings.max_topic_levels:
            exceeded("max_topic_levels")
            raise ProtocolViolation(rc.TOPIC_NAME_INVALID, "too many topic levels")
        if topic[0] == "$" and is_sys_topic(topic):  # the broker's own: no client publishes there
            log.info("client %r: PUBLISH to %r refused: $SYS is reserved for the broker", self.client_id, topic)
            self._publish_refused(packet, topic, "sys_topic")
            return
        acl = self.acl
        if acl is not None and not acl.may_publish(topic):
            self._publish_refused(packet, topic)
            return
        if self.mountpoint:
            topic = self.mountpoint + topic
        qos = packet.qos
        if qos > settings.max_qos_allowed:
            raise ProtocolViolation(rc.QOS_NOT_SUPPORTED, f"QoS {qos} not supported")
        if packet.retain and not settings.retain_available:
            raise ProtocolViolation(rc.RETAIN_NOT_SUPPORTED, "retained messages are not supported")
        message = Message(topic, packet.payload, qos, packet.retain, properties, self.client_id, expires_at)
        broker = self.broker
        if packet.retain and qos and self.v5 and broker.retain_refusal(message) is not None:
            # retainer limits: 5.0 can hear it (and the message is not routed); see config.model.Retainer.
            assert packet.packet_id is not None  # QoS 1/2 carry one (the decoder checks)
            self.connection.write(encode_ack(PUBACK if qos == 1 else PUBREC, packet.packet_id, rc.QUOTA_EXCEEDED))
            return
        if qos == 0:
            broker.publish(message)
            return
        packet_id = packet.packet_id
        assert packet_id is not None  # QoS 1/2 carry one (the decoder checks)
        connection = self.connection
        # The acknowledgement goes out ahead of the copies this PUBLISH produced for this same client (it may
        # subscribe to its own topic), as mosquitto orders them: a client that stops reading once its copy
        # arrived (the Paho interop client's disconnect()) has then always seen its PUBACK/PUBREC.
        mark = connection.output_mark()
        if qos == 1:
            delivered = broker.publish(message)
            if not isinstance(delivered, int):  # a cluster node acknowledges once the backplane has it
                self._ack_when_routed(PUBACK, packet_id, delivered)
                return
            if self.v5 and not delivered:
                connection.write_at(mark, encode_ack(PUBACK, packet_id, rc.NO_MATCHING_SUBSCRIBERS))
            else:
                connection.write_at(mark, encode_puback(packet_id))
            return
        session = self.session
        assert session is not None  # set at CONNECT, before any PUBLISH is handled
        awaiting = session.awaiting_rel
        if packet_id in awaiting:  # a resend of a QoS 2 message already routed
            self.connection.write(encode_pubrec(packet_id))
            return
        limit = settings.max_awaiting_rel
        if limit is not None and len(awaiting) >= limit:
            exceeded("max_awaiting_rel")
            if self.v5:
                raise ProtocolViolation(rc.RECEIVE_MAXIMUM_EXCEEDED, "too many QoS 2 messages awaiting PUBREL")
            broker.count_dropped(message, "awaiting_rel_full")
            log.warning("client %r: QoS 2 message on %r dropped, %d awaiting PUBREL", self.client_id, topic,
                        len(awaiting))
            self.connection.write(encode_pubrec(packet_id))
            return
        delivered = broker.publish(message)
        session.await_release(packet_id, self._loop.time())
        if not isinstance(delivered, int):  # acknowledged once the backplane (cluster) or the disk has it
            if session.store is not None:  # the receipt commits with the deliveries: exactly once
                session.store.awaiting_rel(session, packet_id, True)
            self._ack_when_routed(PUBREC, packet_id, delivered)
            return
        if self.v5 and not delivered:
            connection.write_at(mark, encode_ack(PUBREC, packet_id, rc.NO_MATCHING_SUBSCRIBERS))
        else:
            connection.write_at(mark, encode_pubrec(packet_id))

    def _publish_refused(self, packet: Publish, topic: str, reason: str = "not_authorized") -> None:
        """The ACL (or the $SYS reservation) refused this PUBLISH: 5.0 hears "not authorized" in its
        PUBACK/PUBREC, 3.1.1 gets the usual acknowledgement (it has no way to hear a refusal) and the message is
        dropped, counted under ``reason``."""
        self.broker.metrics.dropped(reason).value += 1
        if self.acl is not None and self.acl.authorizer.disconnect_on_deny:
            raise ProtocolViolation(rc.NOT_AUTHORIZED, f"not authorized to publish to {topic!r}")
        qos = packet.qos
        if qos == 0:
            return
        kind = PUBACK if qos == 1 else PUBREC
        assert packet.packet_id is not None  # QoS 1/2 carry one (the decoder checks)
        self.connection.write(encode_ack(kind, packet.packet_id, rc.NOT_AUTHORIZED, None, self.version))

    def _ack_when_routed(self, kind: int, packet_id: int, pending: asyncio.Future[int]) -> None:
        """PUBACK/PUBREC once ``pending`` (a future of the delivery count) resolves, in the order the PUBLISHes
        arrived (a durable QoS 1 message acknowledged by its subscribers resolves before an earlier one waiting
        for its commit; it waits for that one). When it fails, a 5.0 client hears "unspecified error" (a QoS 2
        message may then be sent again); a 3.1.1 client, which has no negative acknowledgement, is
        disconnected so that it sends the message again."""
        waiting = self._deferred_acks
        if waiting is None:
            waiting = self._deferred_acks = collections.deque()
        waiting.append((pending, kind, packet_id))
        if len(waiting) == 1:
            pending.add_done_callback(self._release_acks)

    def _release_acks(self, _future: asyncio.Future[int] | None = None) -> None:
        waiting = self._deferred_acks
        while waiting:
            pending, kind, packet_id = waiting[0]
            if not pending.done():  # the head decides: called again when it resolves
                pending.add_done_callback(self._release_acks)
                return
            waiting.popleft()
            if not self._disconnected:
                self._deferred_ack(pending, kind, packet_id)

    def _deferred_ack(self, future: asyncio.Future[int], kind: int, packet_id: int) -> None:
        error = None if future.cancelled() else future.exception()
        if future.cancelled() or error is not None:
            if kind == PUBREC and self.session is not None:
                self.session.awaiting_rel.pop(packet_id, None)
            log.warning("client %r: message refused: %s", self.client_id, error or "cancelled")
            if not self.v5:
                if self._deferred_acks is not None:
                    self._deferred_acks.clear()
                self.connection.close()
                return
            props = {"reason_string": str(error)[:200]} if self.problem_information and error else None
            self.connection.write(encode_ack(kind, packet_id, rc.UNSPECIFIED_ERROR, props))
        elif self.v5 and not future.result():
            self.connection.write(encode_ack(kind, packet_id, rc.NO_MATCHING_SUBSCRIBERS))
        else:
            self.connection.write(encode_ack(kind, packet_id, version=self.version))

    def _publish_properties(self, topic: str, properties: Properties) -> tuple[str, Properties | None, float | None]:
        """Resolve the topic alias and split off the per-delivery properties: (topic, passed-through
        properties or None, expiry deadline or None)."""
        alias = properties.get("topic_alias")
        if alias is not None:
            maximum = self.settings.max_topic_alias
            if alias == 0 or alias > maximum:
                raise ProtocolViolation(rc.TOPIC_ALIAS_INVALID, f"topic alias {alias} out of range")
            aliases = self.topic_aliases
            if aliases is None:
                aliases = self.topic_aliases = {}
            if topic:
                aliases[alias] = topic
            else:
                known = aliases.get(alias)
                if known is None:
                    raise ProtocolViolation(rc.PROTOCOL_ERROR, f"unknown topic alias {alias}")
                topic = known
        if "subscription_identifier" in properties:
            raise ProtocolViolation(rc.PROTOCOL_ERROR, "PUBLISH from a client with a subscription identifier")
        response_topic = properties.get("response_topic")
        if response_topic is not None and (not response_topic or has_wildcard(response_topic)):
            raise ProtocolViolation(rc.PROTOCOL_ERROR, "invalid response topic")
        expires_at = None
        interval = properties.get("message_expiry_interval")
        if interval is not None:
            expires_at = self._loop.time() + interval
        passed = {name: properties[name] for name in _PASSED_THROUGH if name in properties}
        return topic, (passed or None), expires_at

    def write_publish(self, message: Message, qos: int, retain: bool, sub_ids: tuple[int, ...], packet_id: int,
                      dup: bool) -> bool:
        """Write ``message`` to the client; False when it had to be dropped instead (expired, too big for the
        client, or the client is too slow for QoS 0)."""
        expiry = None
        expires_at = message.expires_at
        if expires_at is not None:
            remaining = expires_at - self._loop.time()
            if remaining <= 0:
                self.broker.count_dropped(message, "expired")
                return False
            expiry = int(remaining) + 1 if remaining % 1 else int(remaining)
        connection = self.connection
        if qos == 0 and connection.backlog_bytes > self.settings.max_send_buffer:
            self.broker.count_dropped(message, "slow_consumer")
            return False
        alias = 0
        if self.mountpoint:
            head, tail = self._wire_unmounted(message, qos, retain, sub_ids, expiry)
        elif self.v5:
            if self.aliases_out_max:
                alias = self._alias_for(message.topic)
            head, tail = message.wire(5, qos, retain, sub_ids, expiry, alias)
        else:
            head, tail = message.wire(self.version, qos, retain, (), None)
        limit = self.client_max_packet
        if limit is not None and len(head) + len(tail) + (2 if qos else 0) > limit:
            if alias > 0 and self.aliases_out is not None:  # the client never learns this alias: forget it
                del self.aliases_out[message.topic]
            self.broker.count_dropped(message, "too_large")
            return False
        if qos:
            if dup:
                head = bytes((head[0] | 0x08,)) + head[1:]
            connection.write_parts(head, packet_id.to_bytes(2, "big"), tail)
        else:
            connection.write(head)
        self._sent.value += 1
        return True

    def _alias_for(self, topic: str) -> int:
        """The outbound alias form for ``topic``: +n announces alias n (with the topic), -n uses it alone,
        0 sends the topic plainly (all aliases taken)."""
        aliases = self.aliases_out
        if aliases is None:
            aliases = self.aliases_out = {}
        alias = aliases.get(topic)
        if alias is not None:
            return -alias
        if len(aliases) >= self.aliases_out_max:
            return 0
        alias = aliases[topic] = len(aliases) + 1
        return alias

    def _wire_unmounted(self, message: Message, qos: int, retain: bool, sub_ids: tuple[int, ...],
                        expiry: int | None) -> tuple[bytes, bytes]:
        """The PUBLISH for a client behind a mountpoint: its own view of the topic, encoded for it alone."""
        topic = message.topic
        if topic.startswith(self.mountpoint):
            topic = topic[len(self.mountpoint):]
        properties = message.properties
        if self.v5 and (sub_ids or expiry is not None):
            properties = dict(properties) if properties else {}
            if expiry is not None:
                properties["message_expiry_interval"] = expiry
            if sub_ids:
                properties["subscription_identifier"] = list(sub_ids)
        head, tail = encode_publish_parts(topic, message.payload, qos, retain, False,
                                          properties if self.v5 else None, self.version)
        return (head + tail, b"") if not qos else (head, tail)

    def write_pubrel(self, packet_id: int) -> None:
        self.connection.write(encode_pubrel(packet_id))

    # ------------------------------------------------------------------------------------ acknowledgements

    # The handlers below run only past CONNECT (``handle`` checks ``connected``): the session is set.

    def handle_puback(self, packet: PubAck) -> None:
        assert self.session is not None
        if not self.session.puback(packet.packet_id):
            log.debug("client %r: PUBACK for unknown packet id %d", self.client_id, packet.packet_id)

    def handle_pubrec(self, packet: PubAck) -> None:
        assert self.session is not None
        packet_id = packet.packet_id
        known = self.session.pubrec(packet_id, packet.reason_code >= 0x80)
        if packet.reason_code >= 0x80:
            return
        if known:
            self.write_pubrel(packet_id)
        elif self.v5:
            self.connection.write(encode_ack(PUBREL, packet_id, rc.PACKET_IDENTIFIER_NOT_FOUND))
        else:
            self.write_pubrel(packet_id)

    def handle_pubrel(self, packet: PubAck) -> None:
        packet_id = packet.packet_id
        session = self.session
        assert session is not None
        if session.awaiting_rel.pop(packet_id, None) is None:
            if self.v5:
                self.connection.write(encode_ack(PUBCOMP, packet_id, rc.PACKET_IDENTIFIER_NOT_FOUND))
                return
        elif session.store is not None:
            session.store.awaiting_rel(session, packet_id, False)
        self.connection.write(encode_pubcomp(packet_id))

    def handle_pubcomp(self, packet: PubAck) -> None:
        assert self.session is not None
        if not self.session.pubcomp(packet.packet_id):
            log.debug("client %r: PUBCOMP for unknown packet id %d", self.client_id, packet.packet_id)

    def handle_pingreq(self, packet: object) -> None:
        self.connection.write(PINGRESP_BYTES)

    # ------------------------------------------------------------------------------------ (UN)SUBSCRIBE

    def handle_subscribe(self, packet: Subscribe) -> None:
        settings = self.settings
        session = self.session
        assert session is not None
        v5 = self.v5
        failure = rc.UNSPECIFIED_ERROR
        sub_ids = packet.properties.get("subscription_identifier") if v5 else None
        sub_id = sub_ids[0] if sub_ids else None
        codes: list[int] = []
        granted_subs: list[Subscription] = []
        for full_filter, options in packet.topics:
            try:
                shared = parse_shared(full_filter)
            except ValueError:
                codes.append(rc.TOPIC_FILTER_INVALID if v5 else failure)
                continue
            topic_filter = shared[1] if shared else full_filter
            if not valid_topic_filter(topic_filter, settings.max_topic_levels):
                if topic_filter.count("/") >= settings.max_topic_levels:
                    exceeded("max_topic_levels")
                codes.append(rc.TOPIC_FILTER_INVALID if v5 else failure)
                continue
            if self.acl is not None and not self.acl.may_subscribe(topic_filter):
                codes.append(rc.NOT_AUTHORIZED if v5 else failure)
                continue
            if self.mountpoint:
                topic_filter = self.mountpoint + topic_filter
                full_filter = f"$share/{shared[0]}/{topic_filter}" if shared else topic_filter
            if shared and options.no_local:
                raise ProtocolViolation(rc.PROTOCOL_ERROR, "no-local on a shared subscription")
            if shared and not settings.shared_subscription:
                codes.append(rc.SHARED_SUBSCRIPTIONS_NOT_SUPPORTED if v5 else failure)
                continue
            if not settings.wildcard_subscription and has_wildcard(topic_filter):
                codes.append(rc.WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED if v5 else failure)
                continue
            is_new = full_filter not in session.subscriptions
            limit = settings.max_subscriptions
            if is_new and limit is not None and len(session.subscriptions) >= limit:
                exceeded("max_subscriptions")
                codes.append(rc.QUOTA_EXCEEDED if v5 else failure)
                continue
            qos = min(options.qos, settings.max_qos_allowed)
            # ignore_loop_deliver (EMQX): no client gets its own messages back, whatever its version.
            no_local = options.no_local or settings.ignore_loop_deliver
            subscription = Subscription(topic_filter, qos, no_local, options.retain_as_published,
                                        options.retain_handling, sub_id, shared[0] if shared else None)
            subscription.guard = guard_for(self.acl, self.mountpoint, topic_filter)
            self.broker.subscribe(session, full_filter, subscription)
            codes.append(qos)
            if not shared and (options.retain_handling == 0 or (options.retain_handling == 1 and is_new)):
                granted_subs.append(subscription)
        self.connection.write(encode_suback(packet.packet_id, codes, None, self.version))
        for subscription in granted_subs:
            self.broker.deliver_retained(session, subscription)

    def handle_unsubscribe(self, packet: Unsubscribe) -> None:
        session = self.session
        assert session is not None
        codes: list[int] = []
        for full_filter in packet.filters:
            if self.mountpoint:
                shared = _shared_or_none(full_filter)
                full_filter = (f"$share/{shared[0]}/{self.mountpoint}{shared[1]}" if shared
                               else self.mountpoint + full_filter)
            found = self.broker.unsubscribe(session, full_filter)
            codes.append(rc.SUCCESS if found else rc.NO_SUBSCRIPTION_EXISTED)
        self.connection.write(encode_unsuback(packet.packet_id, codes, None, self.version))

    # ------------------------------------------------------------------------------------ DISCONNECT / AUTH

    def handle_disconnect(self, packet: Disconnect) -> None:
        if self.v5:
            requested = packet.properties.get("session_expiry_interval")
            if requested is not None:
                if self.session_expiry == 0 and requested != 0:
                    raise ProtocolViolation(rc.PROTOCOL_ERROR, "session expiry set on DISCONNECT after 0")
                cap = self.settings.session_expiry_interval
                self.session_expiry = cap if requested == _NEVER_EXPIRES else min(float(requested), cap)
                if self.session is not None:
                    self.session.expiry_interval = self.session_expiry
            # Only a normal disconnection (0x00) discards the will; 0x04 and the error codes publish it.
            if packet.reason_code == rc.NORMAL_DISCONNECTION:
                self.will = None
        else:
            self.will = None
        self.terminate(publish_will=True, reason="normal")
        self.connection.close()

    def handle_auth(self, packet: object) -> None:
        raise ProtocolViolation(rc.PROTOCOL_ERROR, "AUTH without enhanced authentication")

    # -------------------------------------------------------------------------------------------- endings

    def abort(self, reason_code: int, reason: str) -> None:
        """Disconnect a client that broke the protocol (5.0: DISCONNECT with the reason first)."""
        if not self.connect_received:
            # Nothing to say to a peer that never sent a CONNECT.
            pass
        elif not self.connected and not self._disconnected:
            if self.v5:
                self.connection.write(encode_connack(False, reason_code,
                                                     {"reason_string": reason} if self.problem_information else None,
                                                     MQTT_5))
        elif self.connected and self.v5:
            self._send_disconnect(reason_code, reason)
        self.terminate(publish_will=True, reason="protocol_error")
        self.connection.close()

    def kick(self, reason_code: int, reason: str) -> None:
        """The server ends this connection (take-over, shutdown, keep-alive timeout)."""
        if self.connected and self.v5:
            self._send_disconnect(reason_code, reason)
        self.terminate(publish_will=reason_code != rc.SERVER_SHUTTING_DOWN,
                       reason=_KICK_REASONS.get(reason_code, "kicked"))
        self.connection.close()

    def _send_disconnect(self, reason_code: int, reason: str) -> None:
        props = {"reason_string": reason} if self.problem_information and reason else None
        self.connection.write(encode_disconnect(reason_code, props, self.version))

    def terminate(self, publish_will: bool, reason: str = "tcp_closed") -> None:
        """Leave the broker: publish or schedule the will, detach from (or end) the session. Idempotent.
        ``reason`` (EMQX's words: normal, takenover, keepalive_timeout, ...) goes into the $SYS event."""
        if self._disconnected:
            return
        self._disconnected = True
        if not self.connected:
            return
        self.connected = False
        will = self.will if publish_will else None
        self.will = None
        broker = self.broker
        broker.detach(self, will)
        events = broker.sys_events
        if events is not None:
            events.client_disconnected(self, reason)

    def connection_lost(self) -> None:
        self.terminate(publish_will=True)

    def housekeeping(self) -> None:
        """Periodic (the broker's sweep): 3.1.1 retries of unacknowledged messages; stale QoS 2 receipts go."""
        session = self.session
        if session is None or not self.connected:
            return
        now = self._loop.time()
        if not self.v5 and session.inflight.entries:
            session.retry(now - self.settings.retry_interval)
        if session.awaiting_rel:
            expired = session.expire_awaiting_rel(now - self.settings.await_rel_timeout)
            if expired:
                log.info("client %r: %d QoS 2 receipts expired without PUBREL", self.client_id, expired)

    def info(self) -> dict[str, Any]:
        """What the admin API lists for a connected client."""
        connection = self.connection
        out = {
            "clientid": self.client_id,
            "username": self.username,
            "listener": connection.listener.id,
            "peer": connection.peer_text,
            "proto_ver": self.version,
            "connected_at": self.connected_at,
            "keepalive": self.keepalive,
            "clean_start": self.session_expiry == 0,
            "subscriptions": len(self.session.subscriptions) if self.session else 0,
        }
        out.update(connection.tls_info())
        return out


def _shared_or_none(topic_filter: str) -> tuple[str, str] | None:
    try:
        return parse_shared(topic_filter)
    except ValueError:
        return None


def _is_utf8(payload: bytes) -> bool:
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


__all__ = ["Channel", "ProtocolViolation", "CONNACK", "SUBACK", "UNSUBACK", "PINGRESP"]
