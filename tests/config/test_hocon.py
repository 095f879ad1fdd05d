"""The HOCON parser: EMQX's and the seed's snippets verbatim, every construct, and errors with positions."""

from __future__ import annotations

import pytest

from wharf_broker.config.errors import ConfigError
from wharf_broker.config.hocon import ListNode, ObjectNode, ScalarNode, parse_file, parse_string, to_plain

# EMQX's "Enable SSL/TLS Connection" page, one-way authentication snippet, verbatim (comments included).
EMQX_ONE_WAY = """\
listeners.ssl.default {
  bind = "0.0.0.0:8883"
  max_connections = 512000
  ssl_options {
    # keyfile = "etc/certs/key.pem"
    keyfile = "etc/certs/server.key"
    # certfile = "etc/certs/cert.pem"
    certfile = "etc/certs/server.crt"
    # cacertfile = "etc/certs/cacert.pem"
    cacertfile = "etc/certs/rootCA.crt"

    # Peer verification not enabled
    verify = verify_none
  }
}
"""

# Issue 3's snippet (mutual TLS), verbatim.
ISSUE_MUTUAL = """\
listeners.ssl.default {
  bind = "0.0.0.0:8883"
  max_connections = 512000
  ssl_options {
    keyfile = "etc/certs/server.key"
    certfile = "etc/certs/server.crt"
    cacertfile = "etc/certs/rootCA.crt"
    verify = verify_peer
    fail_if_no_peer_cert = true
  }
}
"""

# Issue 2's tcp listener line, with a name filled in.
ISSUE_TCP = 'listeners.tcp.default { bind = "0.0.0.0:1883", max_connections = 1024000 }\n'


def plain(text: str, **kwargs):
    return to_plain(parse_string(text, **kwargs))


def test_emqx_one_way_snippet():
    assert plain(EMQX_ONE_WAY) == {"listeners": {"ssl": {"default": {
        "bind": "0.0.0.0:8883", "max_connections": 512000,
        "ssl_options": {"keyfile": "etc/certs/server.key", "certfile": "etc/certs/server.crt",
                        "cacertfile": "etc/certs/rootCA.crt", "verify": "verify_none"}}}}}


def test_issue_mutual_tls_snippet():
    tree = plain(ISSUE_MUTUAL)
    options = tree["listeners"]["ssl"]["default"]["ssl_options"]
    assert options["verify"] == "verify_peer"
    assert options["fail_if_no_peer_cert"] is True


def test_issue_tcp_snippet():
    assert plain(ISSUE_TCP) == {"listeners": {"tcp": {"default": {"bind": "0.0.0.0:1883",
                                                                   "max_connections": 1024000}}}}


def test_every_value_has_its_position():
    tree = parse_string(ISSUE_MUTUAL, source="emqx.conf")
    verify = tree.get(["listeners", "ssl", "default", "ssl_options", "verify"])
    assert isinstance(verify, ScalarNode)
    assert str(verify.origin) == "emqx.conf:8:14"
    bind = tree.get(["listeners", "ssl", "default", "bind"])
    assert (bind.origin.line, bind.origin.col) == (2, 10)
    options = tree.get(["listeners", "ssl", "default", "ssl_options"])
    assert isinstance(options, ObjectNode)
    assert str(options.key_origins["certfile"]) == "emqx.conf:6:5"


def test_scalar_types():
    tree = plain("""
        int = 42
        negative = -7
        float = 2.5
        exp = 1e3
        yes = true
        no = false
        nothing = null
        unquoted = verify_peer
        dotted_unquoted = tlsv1.3
        duration = 120s
        path = etc/certs/server.key
        quoted = "a \\"quoted\\" \\u00e9 string\\n"
    """)
    assert tree == {"int": 42, "negative": -7, "float": 2.5, "exp": 1000.0, "yes": True, "no": False,
                    "nothing": None, "unquoted": "verify_peer", "dotted_unquoted": "tlsv1.3", "duration": "120s",
                    "path": "etc/certs/server.key", "quoted": 'a "quoted" \u00e9 string\n'}


def test_unquoted_number_keeps_its_text():
    node = parse_string("a = 007.50").get(["a"])
    assert isinstance(node, ScalarNode)
    assert node.as_text() == "007.50"


def test_separators_and_braces():
    assert plain("a = 1\nb : 2\nc { d = 3 }\ne: { f: 4 }, g = 5") == {"a": 1, "b": 2, "c": {"d": 3}, "e": {"f": 4},
                                                                       "g": 5}


def test_braced_root_and_json():
    assert plain('{"a": {"b": [1, 2, {"c": "d"}]}, "e": null}') == {"a": {"b": [1, 2, {"c": "d"}]}, "e": None}


def test_dotted_keys_and_merging():
    tree = plain("""
        a.b.c = 1
        a { b { d = 2 } }
        a.b.c = 3
        listeners.tcp.default { bind = "0.0.0.0:1883" }
        listeners.tcp.default.max_connections = 10
        "quoted.key" = 5
        x."y.z" = 6
    """)
    assert tree["a"] == {"b": {"c": 3, "d": 2}}
    assert tree["listeners"]["tcp"]["default"] == {"bind": "0.0.0.0:1883", "max_connections": 10}
    assert tree["quoted.key"] == 5
    assert tree["x"] == {"y.z": 6}


def test_repeated_non_object_replaces():
    assert plain("a = {b = 1}\na = 2") == {"a": 2}
    assert plain("a = 2\na { b = 1 }") == {"a": {"b": 1}}


def test_arrays_comma_and_newline_separated():
    tree = plain("""
        a = [tlsv1.3, tlsv1.2]
        b = [
          "TLS_AES_256_GCM_SHA384"
          ECDHE-RSA-AES256-GCM-SHA384,
          3,
        ]
        c = []
        d = [[1], {x = 1}]
    """)
    assert tree == {"a": ["tlsv1.3", "tlsv1.2"], "b": ["TLS_AES_256_GCM_SHA384", "ECDHE-RSA-AES256-GCM-SHA384", 3],
                    "c": [], "d": [[1], {"x": 1}]}
    node = parse_string("a = [1,\n 2]").get(["a"])
    assert isinstance(node, ListNode) and node.items[1].origin.line == 2


def test_append():
    assert plain("a += 1\na += 2\nb = [0]\nb += 1") == {"a": [1, 2], "b": [0, 1]}


def test_comments():
    assert plain("""
        # hash comment
        // slash comment
        a = 1 # trailing
        b = "not # a comment" // trailing
        c = "http://quoted/url" // a URL must be quoted: ':' and '//' end unquoted text
    """) == {"a": 1, "b": "not # a comment", "c": "http://quoted/url"}


def test_triple_quoted_strings():
    tree = plain('a = """line one\n  "quoted" \\n no escapes\nline three"""\nb = """x""""')
    assert tree["a"] == 'line one\n  "quoted" \\n no escapes\nline three'
    assert tree["b"] == 'x"'


def test_value_concatenation():
    assert plain('a = foo bar  baz\nb = "x" y "z"') == {"a": "foo bar  baz", "b": "x y z"}


def test_environment_substitution():
    env = {"BIND": "127.0.0.1:1999", "NAME": "edge"}
    tree = plain('bind = ${BIND}\nname = "node-"${NAME}\nport = 1883\nport = ${?NO_SUCH_VAR}\n'
                 'list = [a, ${?NO_SUCH_VAR}, b]\nmaybe = ${?NO_SUCH_VAR}', env=env)
    assert tree == {"bind": "127.0.0.1:1999", "name": "node-edge", "port": 1883, "list": ["a", "b"]}


def test_substitution_of_earlier_config_value():
    assert plain("base { port = 1883 }\ncopy = ${base.port}\nobj = ${base}", env={}) == {
        "base": {"port": 1883}, "copy": 1883, "obj": {"port": 1883}}


def test_required_substitution_missing_is_an_error():
    with pytest.raises(ConfigError) as info:
        parse_string("a = 1\nb = ${NOT_SET_ANYWHERE}", source="f.conf", env={})
    assert "f.conf:2:5" in str(info.value)
    assert "NOT_SET_ANYWHERE" in str(info.value)


def test_include(tmp_path):
    (tmp_path / "certs.conf").write_text('keyfile = "k.pem"\ncertfile = "c.pem"\n')
    (tmp_path / "main.conf").write_text(
        'listeners.ssl.default {\n  bind = ":8883"\n  ssl_options { include "certs.conf" }\n}\n'
        'include "missing-is-fine.conf"\n'
        'include required(file("extra.conf"))\n')
    (tmp_path / "extra.conf").write_text("mqtt.max_qos_allowed = 1\n")
    tree = parse_file(tmp_path / "main.conf")
    assert to_plain(tree) == {"listeners": {"ssl": {"default": {
        "bind": ":8883", "ssl_options": {"keyfile": "k.pem", "certfile": "c.pem"}}}}, "mqtt": {"max_qos_allowed": 1}}
    keyfile = tree.get(["listeners", "ssl", "default", "ssl_options", "keyfile"])
    assert str(keyfile.origin) == f"{tmp_path / 'certs.conf'}:1:11"


def test_required_include_missing(tmp_path):
    (tmp_path / "main.conf").write_text('a = 1\ninclude required("nope.conf")\n')
    with pytest.raises(ConfigError, match=r"main.conf:2:1: .*nope.conf.* does not exist"):
        parse_file(tmp_path / "main.conf")


def test_include_cycle(tmp_path):
    (tmp_path / "a.conf").write_text('include "b.conf"\n')
    (tmp_path / "b.conf").write_text('include "a.conf"\n')
    with pytest.raises(ConfigError, match="include cycle"):
        parse_file(tmp_path / "a.conf")


@pytest.mark.parametrize("text, position, message", [
    ('a = "unterminated\n', "t.conf:1:5", "unterminated string"),
    ("a {\n  b = 1\n", "t.conf:3:1", "missing '}'"),
    ("a = [1, 2\n", "t.conf:1:5", "missing ']'"),
    ("a = 1 }\n", "t.conf:1:7", "'}'"),
    ("a.b [1]\n", "t.conf:1:5", "expected '=', ':' or '{'"),
    ("a =\nb = 2\n", "t.conf:1:4", "expected a value"),
    ("a = 0.0.0.0:1883\n", "t.conf:1:12", "expected a new line or ','"),
    ("a = b*c\n", "t.conf:1:6", "unexpected character '*'"),
    ("a..b = 1\n", "t.conf:1:1", "empty path segment"),
    ('a = "bad \\q escape"\n', "t.conf:1:10", "bad escape"),
    ("a = ${unclosed\n", "t.conf:1:5", "unterminated substitution"),
])
def test_syntax_errors_name_the_position(text, position, message):
    with pytest.raises(ConfigError) as info:
        parse_string(text, source="t.conf")
    assert position in str(info.value)
    assert message in str(info.value)


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        parse_file(tmp_path / "none.conf")
