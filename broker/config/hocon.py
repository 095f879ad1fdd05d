"""A HOCON parser for the subset EMQX configs use, keeping every value's ``file:line:col``.

Supported: objects with braces or dotted keys (``listeners.ssl.default { ... }``, ``a.b.c = 1``), ``=`` / ``:``
or no separator before ``{``, ``+=`` to append to an array, merging of repeated object keys (a repeated
non-object key replaces the earlier value), arrays separated by commas and/or newlines, quoted, unquoted and
triple-quoted strings, numbers, booleans, ``null``, ``#`` and ``//`` comments, value concatenation on one line
(``a = foo bar`` is the string ``"foo bar"``), ``include "file"`` (also ``file(...)`` and ``required(...)``) and
substitutions ``${path}`` / ``${?path}``.

Substitutions are resolved while parsing, in a single pass: a path refers to a value set *earlier* in the same
document, otherwise to the environment variable of that name. ``${?X}`` that resolves to nothing leaves the key
as it was, so ``port = 1883`` followed by ``port = ${?PORT}`` is the usual "override from the environment" idiom.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping

from .errors import ConfigError, ConfigIssue, Origin

# ---------------------------------------------------------------------------------------------------------------
# The tree


@dataclass(eq=False)
class Node:
    origin: Origin


@dataclass(eq=False)
class ScalarNode(Node):
    value: str | int | float | bool | None
    # The text as written (for unquoted values: ``120s``, ``1.5``; used when a string is wanted from a number).
    raw: str = ""
    quoted: bool = False

    def as_text(self) -> str:
        if self.quoted or isinstance(self.value, str):
            return str(self.value)
        return self.raw


@dataclass(eq=False)
class ListNode(Node):
    items: list[Node] = field(default_factory=list)


@dataclass(eq=False)
class ObjectNode(Node):
    fields: dict[str, Node] = field(default_factory=dict)
    # Where each key was (last) written: unknown-key errors point at the key, not at its value.
    key_origins: dict[str, Origin] = field(default_factory=dict)

    def get(self, path: list[str]) -> Node | None:
        node: Node | None = self
        for segment in path:
            if not isinstance(node, ObjectNode):
                return None
            node = node.fields.get(segment)
        return node


def to_plain(node: Node):
    """The tree as plain Python values (dicts, lists, scalars)."""
    if isinstance(node, ObjectNode):
        return {key: to_plain(value) for key, value in node.fields.items()}
    if isinstance(node, ListNode):
        return [to_plain(item) for item in node.items]
    return node.value  # type: ignore[attr-defined]


def from_plain(value, origin: Origin) -> Node:
    """Plain Python/JSON values as a tree (for settings that arrive over the admin API)."""
    if isinstance(value, Node):
        return value
    if isinstance(value, Mapping):
        obj = ObjectNode(origin)
        for key, item in value.items():
            obj.fields[str(key)] = from_plain(item, origin)
            obj.key_origins[str(key)] = origin
        return obj
    if isinstance(value, (list, tuple)):
        return ListNode(origin, [from_plain(item, origin) for item in value])
    if value is None or isinstance(value, (bool, int, float, str)):
        return ScalarNode(origin, value, raw="" if value is None else str(value), quoted=isinstance(value, str))
    raise TypeError(f"cannot represent {type(value).__name__} in a config tree")


# ---------------------------------------------------------------------------------------------------------------
# Tokens

LBRACE, RBRACE, LBRACKET, RBRACKET, COMMA, NEWLINE, SEPARATOR, APPEND = "{", "}", "[", "]", ",", "NL", "=", "+="
STRING, UNQUOTED, WS, SUBST, EOF = "STRING", "UNQUOTED", "WS", "SUBST", "EOF"

# Characters that end an unquoted string (HOCON's forbidden set, plus whitespace).
_FORBIDDEN = set('$"{}[]:=,+#`^?!@*&\\')
_NUMBER = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?")
_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


@dataclass
class Token:
    kind: str
    text: str
    origin: Origin
    optional: bool = False  # ${?...}


class _Lexer:
    def __init__(self, text: str, source: str) -> None:
        self.text = text
        self.source = source
        self.pos = 0
        self.line = 1
        self.col = 1

    def error(self, message: str, origin: Origin | None = None) -> ConfigError:
        return ConfigError(ConfigIssue("", message, origin or self.origin()))

    def origin(self) -> Origin:
        return Origin(self.source, self.line, self.col)

    def advance(self, count: int = 1) -> str:
        chunk = self.text[self.pos:self.pos + count]
        for char in chunk:
            if char == "\n":
                self.line += 1
                self.col = 1
            else:
                self.col += 1
        self.pos += count
        return chunk

    def peek(self, offset: int = 0) -> str:
        index = self.pos + offset
        return self.text[index] if index < len(self.text) else ""

    def tokens(self) -> Iterator[Token]:  # noqa: C901 - the tokenizer: one branch per token kind
        text = self.text
        while self.pos < len(text):
            char = text[self.pos]
            origin = self.origin()
            if char == "\n":
                self.advance()
                yield Token(NEWLINE, "\n", origin)
            elif char in " \t\r\ufeff" or (char.isspace() and char != "\n"):
                start = self.pos
                while self.pos < len(text) and text[self.pos] != "\n" and (
                        text[self.pos].isspace() or text[self.pos] == "\ufeff"):
                    self.advance()
                yield Token(WS, text[start:self.pos], origin)
            elif char == "#" or text.startswith("//", self.pos):
                while self.pos < len(text) and text[self.pos] != "\n":
                    self.advance()
            elif char in "{}[],":
                self.advance()
                yield Token(char, char, origin)
            elif char in "=:":
                self.advance()
                yield Token(SEPARATOR, char, origin)
            elif text.startswith("+=", self.pos):
                self.advance(2)
                yield Token(APPEND, "+=", origin)
            elif text.startswith('"""', self.pos):
                yield Token(STRING, self._triple_quoted(origin), origin)
            elif char == '"':
                yield Token(STRING, self._quoted(origin), origin)
            elif text.startswith("${", self.pos):
                yield self._substitution(origin)
            elif char in _FORBIDDEN:
                raise self.error(f"unexpected character {char!r} (quote the value if it is a string)")
            else:
                start = self.pos
                while self.pos < len(text):
                    c = text[self.pos]
                    if c in _FORBIDDEN or c.isspace() or text.startswith("//", self.pos):
                        break
                    self.advance()
                yield Token(UNQUOTED, text[start:self.pos], origin)
        yield Token(EOF, "", self.origin())

    def _quoted(self, origin: Origin) -> str:
        self.advance()  # opening quote
        out: list[str] = []
        while True:
            char = self.peek()
            if char == "" or char == "\n":
                raise self.error("unterminated string", origin)
            if char == '"':
                self.advance()
                return "".join(out)
            if char == "\\":
                escape = self.peek(1)
                if escape in _ESCAPES:
                    out.append(_ESCAPES[escape])
                    self.advance(2)
                elif escape == "u":
                    digits = self.text[self.pos + 2:self.pos + 6]
                    if not re.fullmatch(r"[0-9a-fA-F]{4}", digits):
                        raise self.error("bad \\u escape in string")
                    out.append(chr(int(digits, 16)))
                    self.advance(6)
                else:
                    raise self.error(f"bad escape \\{escape} in string")
            else:
                out.append(char)
                self.advance()

    def _triple_quoted(self, origin: Origin) -> str:
        end = self.text.find('"""', self.pos + 3)
        if end < 0:
            raise self.error('unterminated """ string', origin)
        # Extra quotes right before the closing triple belong to the string.
        while self.text.startswith('"', end + 3):
            end += 1
        value = self.text[self.pos + 3:end]
        self.advance(end + 3 - self.pos)
        return value

    def _substitution(self, origin: Origin) -> Token:
        self.advance(2)
        optional = self.peek() == "?"
        if optional:
            self.advance()
        end = self.text.find("}", self.pos)
        newline = self.text.find("\n", self.pos)
        if end < 0 or (0 <= newline < end):
            raise self.error("unterminated substitution ${...}", origin)
        path = self.text[self.pos:end].strip()
        self.advance(end + 1 - self.pos)
        if not path:
            raise self.error("empty substitution ${}", origin)
        return Token(SUBST, path, origin, optional=optional)


# ---------------------------------------------------------------------------------------------------------------
# Parser

_MISSING = object()  # an optional substitution that resolved to nothing
_MAX_INCLUDE_DEPTH = 16


class _Parser:
    def __init__(self, text: str, source: str, env: Mapping[str, str], include_stack: tuple[str, ...],
                 base_dir: Path) -> None:
        self.lexer = _Lexer(text, source)
        self.tokens = list(self.lexer.tokens())
        self.index = 0
        self.env = env
        self.include_stack = include_stack
        self.base_dir = base_dir
        self.root = ObjectNode(Origin(source, 1, 1))

    # -- token helpers
    @property
    def tok(self) -> Token:
        return self.tokens[self.index]

    def next(self) -> Token:
        token = self.tokens[self.index]
        if token.kind != EOF:
            self.index += 1
        return token

    def skip(self, *kinds: str) -> None:
        while self.tok.kind in kinds:
            self.index += 1

    def error(self, message: str, origin: Origin | None = None) -> ConfigError:
        return ConfigError(ConfigIssue("", message, origin or self.tok.origin))

    @staticmethod
    def describe(token: Token) -> str:
        if token.kind == EOF:
            return "end of file"
        if token.kind == NEWLINE:
            return "end of line"
        return repr(token.text)

    # -- document
    def parse_document(self) -> ObjectNode:
        self.skip(NEWLINE, WS)
        if self.tok.kind == LBRACE:
            self.next()
            self.parse_fields(self.root, RBRACE)
            self.next()
            self.skip(NEWLINE, WS)
        else:
            self.parse_fields(self.root, EOF)
        if self.tok.kind != EOF:
            raise self.error(f"unexpected {self.describe(self.tok)} after the document")
        return self.root

    def parse_fields(self, obj: ObjectNode, closing: str) -> None:
        """Fields up to (not including) ``closing``; they are merged into ``obj``."""
        while True:
            self.skip(NEWLINE, WS)
            if self.tok.kind == closing:
                return
            if self.tok.kind == EOF:
                raise self.error("missing '}' before end of file")
            if self.tok.kind == UNQUOTED and self.tok.text == "include" and self.tokens[self.index + 1].kind == WS:
                self.parse_include(obj)
            else:
                self.parse_field(obj)
            # A field ends with a newline, a comma, or the closing brace.
            self.skip(WS)
            if self.tok.kind == COMMA:
                self.next()
            elif self.tok.kind not in (NEWLINE, closing):
                raise self.error(f"expected a new line or ',' after the value, found {self.describe(self.tok)}")

    def parse_key(self) -> tuple[list[str], Origin]:
        origin = self.tok.origin
        segments: list[str] = []
        current = ""
        pending_ws = ""
        seen_piece = False
        while self.tok.kind in (UNQUOTED, STRING, WS):
            token = self.next()
            if token.kind == WS:
                pending_ws = token.text
                continue
            current += pending_ws if seen_piece else ""
            pending_ws = ""
            seen_piece = True
            if token.kind == STRING:
                current += token.text
            else:
                parts = token.text.split(".")
                current += parts[0]
                for part in parts[1:]:
                    segments.append(current)
                    current = part
        if not seen_piece:
            raise self.error(f"expected a key, found {self.describe(self.tok)}")
        segments.append(current)
        if any(segment == "" for segment in segments):
            raise self.error("empty path segment in key (stray '.')", origin)
        return segments, origin

    def parse_field(self, obj: ObjectNode) -> None:
        path, key_origin = self.parse_key()
        append = False
        if self.tok.kind == SEPARATOR:
            self.next()
        elif self.tok.kind == APPEND:
            self.next()
            append = True
        elif self.tok.kind != LBRACE:
            raise self.error(f"expected '=', ':' or '{{' after key {'.'.join(path)!r}, "
                             f"found {self.describe(self.tok)}")
        self.skip(WS)
        value = self.parse_value()
        if value is _MISSING:
            return
        self.assign(obj, path, value, key_origin, append)

    def assign(self, obj: ObjectNode, path: list[str], value: Node, key_origin: Origin, append: bool) -> None:
        for segment in path[:-1]:
            child = obj.fields.get(segment)
            if not isinstance(child, ObjectNode):
                child = ObjectNode(key_origin)
                obj.fields[segment] = child
            obj.key_origins.setdefault(segment, key_origin)
            obj = child
        last = path[-1]
        existing = obj.fields.get(last)
        if append:
            if existing is None:
                value = ListNode(value.origin, [value])
            elif isinstance(existing, ListNode):
                value = ListNode(existing.origin, existing.items + [value])
            else:
                raise self.error(f"'+=' needs an array at {'.'.join(path)!r}", key_origin)
        elif isinstance(existing, ObjectNode) and isinstance(value, ObjectNode):
            value = merge(existing, value)
        obj.fields[last] = value
        obj.key_origins[last] = key_origin

    def parse_include(self, obj: ObjectNode) -> None:
        origin = self.next().origin  # "include"
        self.skip(WS)
        required = False
        wrappers = 0
        while self.tok.kind == UNQUOTED and self.tok.text.endswith("("):
            # "required(file(" lexes as one token.
            for name in self.next().text.split("(")[:-1]:
                if name == "required":
                    required = True
                elif name in ("url", "classpath"):
                    raise self.error(f"include {name}(...) is not supported; use a file path", origin)
                elif name != "file":
                    raise self.error(f"unknown include form {name}(...)", origin)
                wrappers += 1
        if self.tok.kind != STRING:
            raise self.error("include needs a quoted file name", origin)
        name = self.next().text
        for _ in range(wrappers):
            if not (self.tok.kind == UNQUOTED and self.tok.text.startswith(")")):
                raise self.error("missing ')' in include", origin)
            token = self.next()
            # ")))" lexes as one unquoted token.
            if len(token.text) > 1:
                self.index -= 1
                self.tokens[self.index] = Token(UNQUOTED, token.text[1:], token.origin)
        path = Path(name)
        if not path.is_absolute():
            path = self.base_dir / path
        if not path.is_file():
            if required:
                raise self.error(f"included file {str(path)!r} does not exist", origin)
            return  # HOCON: a missing include is silently skipped unless required(...)
        resolved = str(path.resolve())
        if resolved in self.include_stack or len(self.include_stack) >= _MAX_INCLUDE_DEPTH:
            raise self.error(f"include cycle through {str(path)!r}", origin)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise self.error(f"cannot read included file {str(path)!r}: {exc}", origin) from None
        included = _Parser(text, str(path), self.env, self.include_stack + (resolved,), path.parent).parse_document()
        merge(obj, included)

    # -- values
    def parse_value(self) -> Node | object:
        token = self.tok
        if token.kind == LBRACE:
            self.next()
            obj = ObjectNode(token.origin)
            self.parse_fields(obj, RBRACE)
            self.next()
            return obj
        if token.kind == LBRACKET:
            return self.parse_array()
        pieces: list[Token] = []
        while self.tok.kind in (UNQUOTED, STRING, SUBST, WS):
            pieces.append(self.next())
        while pieces and pieces[-1].kind == WS:
            pieces.pop()
        if not pieces:
            raise self.error(f"expected a value, found {self.describe(self.tok)}")
        if len(pieces) == 1:
            return self.simple_value(pieces[0])
        return self.concatenation(pieces)

    def parse_array(self) -> ListNode:
        start = self.next()
        array = ListNode(start.origin)
        while True:
            self.skip(NEWLINE, WS)
            if self.tok.kind == RBRACKET:
                self.next()
                return array
            if self.tok.kind == EOF:
                raise self.error("missing ']' before end of file", start.origin)
            value = self.parse_value()
            if value is not _MISSING:
                array.items.append(value)  # type: ignore[arg-type]
            self.skip(WS)
            if self.tok.kind == COMMA:
                self.next()
            elif self.tok.kind not in (NEWLINE, RBRACKET):
                raise self.error(f"expected ',' or ']' in array, found {self.describe(self.tok)}")

    def simple_value(self, token: Token) -> Node | object:
        if token.kind == STRING:
            return ScalarNode(token.origin, token.text, raw=token.text, quoted=True)
        if token.kind == SUBST:
            return self.resolve(token)
        text = token.text
        if text == "true" or text == "false":
            return ScalarNode(token.origin, text == "true", raw=text)
        if text == "null":
            return ScalarNode(token.origin, None, raw=text)
        if _NUMBER.fullmatch(text):
            number: int | float = int(text) if re.fullmatch(r"-?[0-9]+", text) else float(text)
            return ScalarNode(token.origin, number, raw=text)
        return ScalarNode(token.origin, text, raw=text)

    def concatenation(self, pieces: list[Token]) -> Node:
        out: list[str] = []
        for piece in pieces:
            if piece.kind == SUBST:
                value = self.resolve(piece)
                if value is _MISSING:
                    continue
                if not isinstance(value, ScalarNode):
                    raise self.error(f"${{{piece.text}}} is an object or array and cannot be joined with text",
                                     piece.origin)
                out.append("" if value.value is None else value.as_text())
            else:
                out.append(piece.text)
        text = "".join(out)
        return ScalarNode(pieces[0].origin, text, raw=text, quoted=True)

    def resolve(self, token: Token) -> Node | object:
        path = token.text
        segments = [s.strip('"') for s in path.split(".")]
        found = self.root.get(segments)
        if found is not None:
            return found
        if path in self.env:
            return ScalarNode(token.origin, self.env[path], raw=self.env[path], quoted=True)
        if token.optional:
            return _MISSING
        raise self.error(f"substitution ${{{path}}} is not defined (no such key above, no such environment "
                         f"variable); use ${{?{path}}} if it is optional", token.origin)


def merge(base: ObjectNode, overlay: ObjectNode) -> ObjectNode:
    """Merge ``overlay`` into ``base`` in place: objects merge key by key, anything else is replaced."""
    for key, value in overlay.fields.items():
        existing = base.fields.get(key)
        if isinstance(existing, ObjectNode) and isinstance(value, ObjectNode):
            merge(existing, value)
        else:
            base.fields[key] = value
        base.key_origins[key] = overlay.key_origins.get(key, value.origin)
    return base


def parse_string(text: str, source: str = "<string>", env: Mapping[str, str] | None = None,
                 base_dir: str | Path | None = None) -> ObjectNode:
    """Parse HOCON text. ``base_dir`` is where relative includes are looked up (default: the working dir)."""
    return _Parser(text, source, os.environ if env is None else env, (),
                   Path(base_dir) if base_dir is not None else Path.cwd()).parse_document()


def parse_file(path: str | Path, env: Mapping[str, str] | None = None) -> ObjectNode:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(ConfigIssue("", f"config file {str(path)!r} does not exist")) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(ConfigIssue("", f"cannot read config file {str(path)!r}: {exc}")) from None
    return _Parser(text, str(path), os.environ if env is None else env, (str(path.resolve()),),
                   path.parent).parse_document()


def dumps(node: Node) -> str:
    """Render a tree back as (JSON-flavoured) HOCON; handy for showing an effective config."""
    return json.dumps(to_plain(node), indent=2)
