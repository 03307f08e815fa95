"""What the commands share: the connection options (etcdctl's names and environment variables), the
error report, and a throwaway local etcd for the commands that can start one."""

from __future__ import annotations

import argparse
import contextlib
import getpass
import os
import sys
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from etcdlock._client import Client
from etcdlock._core.connection import TLSConfig, parse_endpoint
from etcdlock._core.errors import AuthError, ConfigError, ConnectionFailedError
from etcdlock.testing import EtcdCluster

EXIT_ERROR = 5  # every command: etcd unreachable, auth failed, bad input
DEFAULT_ENDPOINT = "127.0.0.1:2379"  # etcdctl's

# Where each connection setting comes from, first match wins: the flag, then these variables (etcdctl's,
# with ETCDLOCK_ENDPOINTS kept from before etcdlock followed etcdctl).
_ENV = {
    "endpoints": ("ETCDLOCK_ENDPOINTS", "ETCDCTL_ENDPOINTS"),
    "cacert": ("ETCDCTL_CACERT",),
    "cert": ("ETCDCTL_CERT",),
    "key": ("ETCDCTL_KEY",),
    "insecure_transport": ("ETCDCTL_INSECURE_TRANSPORT",),
    "user": ("ETCDCTL_USER",),
    "password": ("ETCDCTL_PASSWORD",),
}
# The spellings Go's strconv.ParseBool takes, which etcdctl's boolean flags and variables go through.
_TRUE = frozenset({"1", "t", "T", "true", "TRUE", "True"})
_FALSE = frozenset({"0", "f", "F", "false", "FALSE", "False"})

PasswordPrompt = Callable[[str], str]


def add_connection_options(p: argparse.ArgumentParser, *, local_etcd: bool = False) -> None:
    """Add --endpoints, --cacert, --cert, --key, --insecure-transport, --user and --password to p.

    local_etcd: the command starts a throwaway local etcd unless --endpoints is given; the environment's
    endpoints are then not used, so that its writes never land on a cluster by accident.
    """
    g = p.add_argument_group("connection", "etcdctl's flags; each read from the variable named if not given")
    if local_etcd:
        where = (
            "default: a throwaway local etcd, without TLS or auth; $ETCDCTL_ENDPOINTS is not used, so "
            "that these writes never go to a cluster by accident"
        )
    else:
        where = f"$ETCDLOCK_ENDPOINTS, else $ETCDCTL_ENDPOINTS; default {DEFAULT_ENDPOINT}"
    g.add_argument(
        "--endpoints",
        metavar="LIST",
        help=f"comma-separated etcd endpoints, host:port or http(s)://host:port ({where})",
    )
    g.add_argument(
        "--cacert",
        metavar="FILE",
        help="verify the server's certificate with this CA bundle ($ETCDCTL_CACERT)",
    )
    g.add_argument(
        "--cert", metavar="FILE", help="client certificate for TLS, used with --key ($ETCDCTL_CERT)"
    )
    g.add_argument("--key", metavar="FILE", help="private key of --cert ($ETCDCTL_KEY)")
    g.add_argument(
        "--insecure-transport",
        metavar="BOOL",
        help="'false': use TLS (verified against the system's CAs) even without --cacert/--cert or "
        "https:// endpoints; default true: plain text unless one of those is given "
        "($ETCDCTL_INSECURE_TRANSPORT)",
    )
    g.add_argument(
        "--user",
        metavar="USER[:PASSWORD]",
        help="authenticate as USER ($ETCDCTL_USER); with no password here, in --password or in "
        "$ETCDCTL_PASSWORD, it is asked for on the terminal (a password here is visible in `ps`)",
    )
    g.add_argument(
        "--password",
        help="password of --user ($ETCDCTL_PASSWORD); visible to every local user in `ps`: prefer the "
        "variable or the prompt",
    )


@dataclass(frozen=True)
class Connection:
    """Where and how to reach etcd, resolved from the command line and the environment."""

    endpoints: list[str] | None  # None: none given, and the command starts a local etcd
    username: str | None = None
    password: str | None = None
    tls: TLSConfig | None = None

    def client(self, endpoints: Sequence[str] | None = None) -> Client:
        """A client for `endpoints` (default: the ones resolved) with these credentials and TLS."""
        chosen = endpoints if endpoints is not None else self.endpoints
        if not chosen:
            raise ConfigError("no endpoints to connect to")
        return Client(chosen, username=self.username, password=self.password, tls=self.tls)

    @contextlib.asynccontextmanager
    async def connected(
        self, wait: float | None = None, endpoints: Sequence[str] | None = None
    ) -> AsyncIterator[Client]:
        """A client that has reached etcd, closed on the way out; the connection is waited for at most
        `wait` seconds (None: the client's own timeout)."""
        client = self.client(endpoints)
        try:
            await client.connect(timeout=wait)
            yield client
        finally:
            await client.close()

    @property
    def plain_text(self) -> bool:
        """No TLS at all: no TLS options and no https:// endpoint."""
        return self.tls is None and not any(parse_endpoint(e)[1] for e in self.endpoints or ())


@dataclass(frozen=True)
class _Setting:
    value: str
    source: str  # "--cacert" or "$ETCDCTL_CACERT": error messages say where a bad value came from


def _setting(args: argparse.Namespace, dest: str, environ: Mapping[str, str]) -> _Setting | None:
    """The flag's value if given (even empty: `--user ''` overrides $ETCDCTL_USER), else the first
    non-empty variable of _ENV[dest]. None, or an empty value, means not set."""
    given: str | None = getattr(args, dest, None)
    if given is not None:
        return _Setting(given, _flag(dest)) if given else None
    for name in _ENV[dest]:
        if environ.get(name):
            return _Setting(environ[name], "$" + name)
    return None


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def connection_from(
    args: argparse.Namespace,
    *,
    local_etcd: bool = False,
    environ: Mapping[str, str] | None = None,
    prompt: PasswordPrompt | Literal["terminal"] | None = "terminal",
) -> Connection:
    """Resolve the options of add_connection_options (each flag, else its variable) into a Connection.

    local_etcd: as given to add_connection_options; without --endpoints the result has endpoints None and
    neither TLS nor credentials. environ: default os.environ. prompt: asks for a password that no option
    or variable gives; "terminal": getpass, if stdin is a terminal; None: there is no one to ask.
    Raises ConfigError for contradictory or incomplete options, naming the flag or variable at fault.
    """
    env = os.environ if environ is None else environ
    if local_etcd and args.endpoints is None:
        flags = [_flag(d) for d in _ENV if d != "endpoints" and getattr(args, d) is not None]
        if flags:
            raise ConfigError(
                f"{', '.join(flags)}: only for a cluster given with --endpoints (without it, a throwaway "
                "local etcd with neither TLS nor auth is started)"
            )
        return Connection(None)
    if prompt == "terminal":
        prompt = getpass.getpass if sys.stdin is not None and sys.stdin.isatty() else None
    username, password = _credentials(args, env, prompt)
    return Connection(_endpoints(args, env), username, password, _tls(args, env))


def _endpoints(args: argparse.Namespace, environ: Mapping[str, str]) -> list[str]:
    if args.endpoints is not None:  # even empty: a list naming no endpoint is a mistake, not "the default"
        setting = _Setting(args.endpoints, "--endpoints")
    else:
        setting = _setting(args, "endpoints", environ) or _Setting(DEFAULT_ENDPOINT, "default")
    endpoints = [e.strip() for e in setting.value.split(",") if e.strip()]
    if not endpoints:
        raise ConfigError(f"{setting.source} names no endpoint: {setting.value!r}")
    return endpoints


def _tls(args: argparse.Namespace, environ: Mapping[str, str]) -> TLSConfig | None:
    cacert, cert, key = (_setting(args, d, environ) for d in ("cacert", "cert", "key"))
    if cert is not None and key is None:
        raise ConfigError(f"{cert.source} needs --key (or $ETCDCTL_KEY): a certificate goes with its key")
    if key is not None and cert is None:
        raise ConfigError(f"{key.source} needs --cert (or $ETCDCTL_CERT): a key goes with its certificate")
    insecure = _setting(args, "insecure_transport", environ)
    if insecure is not None and insecure.value not in _TRUE | _FALSE:
        raise ConfigError(f"{insecure.source} must be true or false, got {insecure.value!r}")
    if cacert is None and cert is None and (insecure is None or insecure.value in _TRUE):
        return None  # plain text, unless an endpoint says https://
    return TLSConfig(
        ca_file=cacert.value if cacert else None,
        cert_file=cert.value if cert else None,
        key_file=key.value if key else None,
    )


def _credentials(
    args: argparse.Namespace, environ: Mapping[str, str], prompt: PasswordPrompt | None
) -> tuple[str | None, str | None]:
    """(user, password) as etcdctl takes them: --user USER[:PASSWORD] and --password, each flag over its
    variable, and a password found nowhere asked for. (None, None) without a user."""
    user = _setting(args, "user", environ)
    password = _setting(args, "password", environ)
    if user is None:
        if password is not None:
            raise ConfigError(f"{password.source} is given but no user: give --user or set ETCDCTL_USER")
        return None, None
    name, colon, rest = user.value.partition(":")
    if not name:
        raise ConfigError(f"{user.source} gives an empty user name")
    given = [s for s in (_Setting(rest, user.source) if colon else None, password) if s is not None]
    # A password from a flag wins over one from a variable; two from flags, or two from variables, clash.
    level = [s for s in given if s.source.startswith("--")] or given
    if len(level) > 1:
        raise ConfigError(f"the password is given twice, in {level[0].source} and {level[1].source}")
    if level:
        return name, level[0].value
    if prompt is None:
        raise ConfigError(
            f"no password for etcd user {name!r}, and no terminal to ask on: set ETCDCTL_PASSWORD, or give "
            f"--user {name}:PASSWORD or --password (both visible in ps)"
        )
    return name, prompt(f"Password for etcd user {name}: ")


# The library's advice names its API arguments; on the command line the flags are what to give.
_API_TO_FLAGS = (
    ("pass username= and password=", "give --user USER[:PASSWORD], or set ETCDCTL_USER"),
    ("tls=TLSConfig(...) or an https:// endpoint", "--cacert FILE or an https:// endpoint"),
    ("username/password given", "--user given"),
)


def error_text(err: Exception, conn: Connection | None) -> str:
    """err's message (in the command line's words), and what to try when an option not given explains it."""
    text = str(err)
    for api, flags in _API_TO_FLAGS:
        text = text.replace(api, flags)
    hint = _hint(err, conn) if conn is not None else None
    if hint and hint in text:
        hint = None  # the message says it already
    return f"{text}\n  ({hint})" if hint else text


def _hint(err: Exception, conn: Connection) -> str | None:
    text = str(err)
    if isinstance(err, AuthError):
        return "give --user USER[:PASSWORD], or set ETCDCTL_USER" if conn.username is None else None
    if not isinstance(err, ConnectionFailedError):
        return None
    if conn.plain_text:
        # A TLS server drops a plain-text client without saying why ("Socket closed").
        if "Connection refused" in text:
            return None
        return "connected in plain text: if etcd serves TLS, give --cacert FILE (and --cert/--key)"
    tls = conn.tls or TLSConfig()  # https:// endpoints alone: TLS with no files
    if tls.ca_file is None and "could not be verified" in text:
        return "no --cacert given: the server's certificate was checked against the system's CAs"
    if tls.cert_file is None and "client certificate" in text:
        return "no --cert/--key given: give them if etcd asks for a client certificate"
    return None


def report_error(err: Exception, conn: Connection | None) -> int:
    """Print err for the user (stderr) and return EXIT_ERROR."""
    print(f"etcdlock: {error_text(err, conn)}", file=sys.stderr)
    return EXIT_ERROR


@contextlib.contextmanager
def endpoints_or_local(
    conn: Connection, say: bool = True, etcd_args: Sequence[str] = ()
) -> Iterator[list[str]]:
    """The connection's endpoints, or those of a local etcd started now and stopped (by PID) on the way
    out when it has none."""
    if conn.endpoints is not None:
        yield conn.endpoints
        return
    with EtcdCluster(1, extra_args=etcd_args) as cluster:
        if say:
            member = cluster.members[0]
            print(f"started a throwaway etcd at {member.endpoint} (pid {member.pid})", flush=True)
        yield cluster.endpoints
