"""Make or update an entry of the broker's password file.

    python -m wharf_broker.authn.passwd -f users.txt alice          # asks for the password twice
    python -m wharf_broker.authn.passwd -f users.txt -D alice       # removes alice
    echo secret | python -m wharf_broker.authn.passwd --stdin alice # prints the line instead

Comment lines, blank lines and the order of the other entries are kept as they are. The file is rewritten
atomically (a temporary file renamed over it), so a running broker never reads half a
file; it picks the change up at its next digest check or on SIGHUP.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
import tempfile

from . import hashing
from .password_file import PasswordFileError, parse_password_file


def _read_password(from_stdin: bool) -> bytes:
    if from_stdin:
        line = sys.stdin.buffer.readline().rstrip(b"\r\n")
        if not line:
            raise SystemExit("no password on standard input")
        return line
    first = getpass.getpass("Password: ")
    if not first or first != getpass.getpass("Again: "):
        raise SystemExit("the passwords are empty or differ")
    return first.encode()


def _write_atomically(path: str, text: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".passwd-")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _entry_name(line: str) -> str | None:
    """The username of an entry line, None for a comment or blank line (the file already parsed)."""
    stripped = line.strip()
    if not stripped or stripped.startswith("#"):
        return None
    return stripped.rpartition(":")[0]


def updated_text(text: str, username: str, encoded: str | None) -> str:
    """``text`` with ``username``'s line replaced by ``encoded`` (appended if new) or removed (``encoded`` None);
    every other line, comments and blank lines included, stays as it was."""
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    out: list[str] = []
    for line in lines:
        if _entry_name(line) == username:
            if encoded is not None:
                out.append(f"{username}:{encoded}\n")
                encoded = None
            continue
        out.append(line)
    if encoded is not None:
        out.append(f"{username}:{encoded}\n")
    return "".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wharf_broker.authn.passwd", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("username")
    parser.add_argument("-f", "--file", help="password file to update (created if missing); else print the line")
    parser.add_argument("-D", "--delete", action="store_true", help="remove the user from --file")
    parser.add_argument("--stdin", action="store_true", help="read the password from the first line of stdin")
    parser.add_argument("--algorithm", default=hashing.DEFAULT_ALGORITHM, choices=["pbkdf2_sha256", "pbkdf2_sha512"])
    parser.add_argument("--iterations", type=int, default=hashing.DEFAULT_ITERATIONS)
    args = parser.parse_args(argv)
    if ":" in args.username or not args.username.strip() or args.username != args.username.strip():
        parser.error("the username must not be empty, contain ':' or start/end with spaces")
    if args.delete and not args.file:
        parser.error("--delete needs --file")
    users: dict[str, str] = {}
    text = ""
    if args.file and os.path.exists(args.file):
        with open(args.file, encoding="utf-8") as handle:
            text = handle.read()
            try:
                users = parse_password_file(text, args.file)
            except PasswordFileError as error:
                print(f"refusing to rewrite a broken file: {error}", file=sys.stderr)
                return 2
    if args.delete:
        if users.pop(args.username, None) is None:
            print(f"no user {args.username!r} in {args.file}", file=sys.stderr)
            return 1
    else:
        try:
            users[args.username] = hashing.hash_password(_read_password(args.stdin), args.algorithm,
                                                         args.iterations)
        except hashing.HashFormatError as error:
            parser.error(str(error))
    if not args.file:
        print(f"{args.username}:{users[args.username]}")
        return 0
    _write_atomically(args.file, updated_text(text, args.username, users.get(args.username)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
