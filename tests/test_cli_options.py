"""The command line's surface, without etcd: etcdctl's connection options and variables and which wins,
the password rules, --version, and help text a user can act on."""

from __future__ import annotations

import argparse
import subprocess

import pytest

import etcdlock
from etcdlock import ConfigError, TLSConfig
from etcdlock._cli.common import Connection, connection_from
from etcdlock._cli.main import build_parser, main
from tests.test_cli import CLI, cli_env

CONNECTING = ["lock", "elect", "status", "soak", "demo"]  # every command that connects
CONNECTION_OPTIONS = [
    "--endpoints",
    "--cacert",
    "--cert",
    "--key",
    "--insecure-transport",
    "--user",
    "--password",
]


def parse(*words: str) -> argparse.Namespace:
    return build_parser().parse_args(["lock", *words, "job"])


def resolve(
    *words: str, env: dict[str, str] | None = None, answer: str | None = None, local: bool = False
) -> tuple[Connection, list[str]]:
    """connection_from for `etcdlock lock WORDS job` (or soak, local=True) with this environment; a
    prompt that answers `answer` (None: there is no terminal). Returns the Connection and the prompts."""
    asked: list[str] = []

    def prompt(text: str) -> str:
        asked.append(text)
        assert answer is not None
        return answer

    args = build_parser().parse_args(["soak", *words]) if local else parse(*words)
    conn = connection_from(
        args, local_etcd=local, environ=env or {}, prompt=None if answer is None else prompt
    )
    return conn, asked


# ---- endpoints ----


def test_endpoints_default_to_etcdctls() -> None:
    conn, _ = resolve()
    assert conn.endpoints == ["127.0.0.1:2379"]
    assert conn.username is None and conn.password is None and conn.tls is None


def test_endpoints_flag_wins_over_both_variables() -> None:
    env = {"ETCDCTL_ENDPOINTS": "a:1", "ETCDLOCK_ENDPOINTS": "b:2"}
    assert resolve("--endpoints", "c:3, d:4", env=env)[0].endpoints == ["c:3", "d:4"]
    assert resolve(env=env)[0].endpoints == ["b:2"]  # ETCDLOCK_ENDPOINTS, as before, then etcdctl's
    assert resolve(env={"ETCDCTL_ENDPOINTS": "a:1,https://e:5"})[0].endpoints == ["a:1", "https://e:5"]


def test_endpoints_naming_none_is_an_error() -> None:
    for given in (" , ", ""):
        with pytest.raises(ConfigError, match=r"--endpoints names no endpoint"):
            resolve("--endpoints", given)


def test_local_etcd_commands_ignore_the_environment_without_endpoints() -> None:
    env = {"ETCDCTL_ENDPOINTS": "prod:2379", "ETCDCTL_USER": "root:pw", "ETCDCTL_CACERT": "/ca.pem"}
    conn, _ = resolve(env=env, local=True)
    assert conn == Connection(None)
    conn, _ = resolve("--endpoints", "x:1", env=env, local=True)
    assert conn.endpoints == ["x:1"] and conn.username == "root" and conn.tls == TLSConfig(ca_file="/ca.pem")


def test_local_etcd_commands_refuse_tls_or_auth_flags_without_endpoints() -> None:
    with pytest.raises(ConfigError, match=r"--cacert, --user: only for a cluster given with --endpoints"):
        resolve("--cacert", "ca.pem", "--user", "root:pw", local=True)


# ---- TLS ----


def test_tls_files_from_flags_or_variables_flag_first() -> None:
    env = {"ETCDCTL_CACERT": "env-ca", "ETCDCTL_CERT": "env-cert", "ETCDCTL_KEY": "env-key"}
    assert resolve(env=env)[0].tls == TLSConfig("env-ca", "env-cert", "env-key")
    conn, _ = resolve("--cacert", "ca", "--cert", "c", "--key", "k", env=env)
    assert conn.tls == TLSConfig("ca", "c", "k")
    assert resolve("--cacert", "ca")[0].tls == TLSConfig(ca_file="ca")


def test_an_empty_flag_overrides_its_variable() -> None:
    conn, _ = resolve("--cacert", "", "--user", "", env={"ETCDCTL_CACERT": "ca", "ETCDCTL_USER": "root:pw"})
    assert conn.tls is None and conn.username is None


@pytest.mark.parametrize(
    ("words", "env", "message"),
    [
        (["--cert", "c"], {}, r"--cert needs --key"),
        ([], {"ETCDCTL_KEY": "k"}, r"\$ETCDCTL_KEY needs --cert"),
        (["--insecure-transport=maybe"], {}, r"--insecure-transport must be true or false, got 'maybe'"),
        ([], {"ETCDCTL_INSECURE_TRANSPORT": "no"}, r"\$ETCDCTL_INSECURE_TRANSPORT must be true or false"),
    ],
)
def test_incomplete_tls_options_name_the_culprit(words: list[str], env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve(*words, env=env)


def test_insecure_transport_false_asks_for_tls_with_the_system_cas() -> None:
    assert resolve("--insecure-transport=false")[0].tls == TLSConfig()
    assert resolve(env={"ETCDCTL_INSECURE_TRANSPORT": "false"})[0].tls == TLSConfig()
    assert resolve("--insecure-transport=true")[0].tls is None  # etcdctl's default: plain text
    conn, _ = resolve("--insecure-transport=true", "--cacert", "ca")
    assert conn.tls == TLSConfig(ca_file="ca")  # files given: TLS, as etcdctl does


# ---- user and password ----


def test_user_with_password_from_either_place() -> None:
    assert resolve("--user", "root:pw:with:colons")[0].password == "pw:with:colons"
    conn, _ = resolve(env={"ETCDCTL_USER": "root:pw"})
    assert (conn.username, conn.password) == ("root", "pw")
    conn, _ = resolve(env={"ETCDCTL_USER": "root", "ETCDCTL_PASSWORD": "pw"})
    assert (conn.username, conn.password) == ("root", "pw")
    conn, _ = resolve("--user", "root", "--password", "pw")
    assert (conn.username, conn.password) == ("root", "pw")


def test_flags_win_over_variables_for_user_and_password() -> None:
    env = {"ETCDCTL_USER": "alice:alicepw", "ETCDCTL_PASSWORD": "envpw"}
    conn, _ = resolve("--user", "bob", env=env)
    assert (conn.username, conn.password) == ("bob", "envpw")  # alice's password stays alice's
    conn, _ = resolve("--user", "bob:bobpw", env={"ETCDCTL_PASSWORD": "envpw"})
    assert conn.password == "bobpw"
    conn, _ = resolve("--password", "flagpw", env=env)
    assert (conn.username, conn.password) == ("alice", "flagpw")


@pytest.mark.parametrize(
    ("words", "env", "message"),
    [
        (["--user", "root:a", "--password", "b"], {}, r"given twice, in --user and --password"),
        (
            [],
            {"ETCDCTL_USER": "root:a", "ETCDCTL_PASSWORD": "b"},
            r"in \$ETCDCTL_USER and \$ETCDCTL_PASSWORD",
        ),
        (["--password", "pw"], {}, r"--password is given but no user"),
        ([], {"ETCDCTL_PASSWORD": "pw"}, r"\$ETCDCTL_PASSWORD is given but no user"),
        (["--user", ":pw"], {}, r"--user gives an empty user name"),
    ],
)
def test_contradictory_credentials_are_refused(words: list[str], env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve(*words, env=env, answer="never asked")


def test_a_missing_password_is_asked_for() -> None:
    conn, asked = resolve("--user", "root", answer="typed")
    assert (conn.username, conn.password) == ("root", "typed")
    assert asked == ["Password for etcd user root: "]
    conn, asked = resolve("--user", "root:given", answer="typed")
    assert conn.password == "given" and asked == []


def test_a_missing_password_without_a_terminal_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match=r"no password for etcd user 'root', and no terminal to ask on"):
        resolve("--user", "root")
    with pytest.raises(ConfigError, match=r"set ETCDCTL_PASSWORD"):
        resolve(env={"ETCDCTL_USER": "root"})


# ---- version and help ----


def test_version_prints_the_package_version() -> None:
    r = subprocess.run(
        [*CLI, "--version"], env=cli_env(), capture_output=True, text=True, timeout=30, check=False
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"etcdlock {etcdlock.__version__}\n"


def help_of(capsys: pytest.CaptureFixture[str], *words: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main([*words, "--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def test_top_level_help_lists_every_command_and_the_environment(capsys: pytest.CaptureFixture[str]) -> None:
    text = help_of(capsys)
    for command in ("lock", "status", "soak", "demo", "etcd", "--version"):
        assert command in text
    for variable in ("ETCDCTL_ENDPOINTS", "ETCDCTL_CACERT", "ETCDCTL_USER", "ETCDCTL_PASSWORD"):
        assert variable in text
    assert "entry point" not in text and "dispatch" not in text  # the module's docstring is not help


def test_lock_usage_shows_the_command_after_the_separator(capsys: pytest.CaptureFixture[str]) -> None:
    text = help_of(capsys, "lock")
    assert text.startswith("usage: etcdlock lock [options] NAME [-- CMD [ARGS...]]\n")
    assert "ETCD_LOCK_KEY" in text and "exit status:" in text


def test_elect_usage_shows_both_forms(capsys: pytest.CaptureFixture[str]) -> None:
    text = help_of(capsys, "elect")
    assert text.startswith(
        "usage: etcdlock elect [options] NAME PROPOSAL [-- CMD [ARGS...]]\n"
        "       etcdlock elect --listen [options] NAME\n"
    )
    assert "ETCD_ELECTION_KEY" in text and "exit status:" in text and "--listen" in text


@pytest.mark.parametrize("command", CONNECTING)
def test_connecting_commands_take_etcdctls_options(capsys: pytest.CaptureFixture[str], command: str) -> None:
    text = help_of(capsys, command)
    for option in CONNECTION_OPTIONS:
        assert option in text
    assert "visible to every local user in `ps`" in " ".join(text.split())


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def test_every_command_and_option_has_help() -> None:
    parser = build_parser()
    commands = _subparsers(parser)
    assert set(commands) == {"lock", "elect", "status", "soak", "demo", "etcd"}
    for name, sub in commands.items():
        assert sub.description, f"{name} has no description"
        assert not sub.description.startswith("`etcdlock"), f"{name}: a module docstring as description"
        for action in sub._actions:
            assert action.help and action.help != argparse.SUPPRESS, f"{name} {action.option_strings}"
