"""kubectl beco: argument handling, the beco command line, the verify-log verdict."""

from __future__ import annotations

import base64
import json

import pytest
from beco_kubectl import args as cli
from beco_kubectl.summary import Head


def test_kubectl_conventions_before_or_after_the_subcommand() -> None:
    a = cli.parse(["-n", "ns1", "--context", "kind", "status", "demo", "-o", "json"]).ns
    assert (a.namespace, a.context, a.output, a.cmd, a.name) == (
        "ns1",
        "kind",
        "json",
        "status",
        "demo",
    )
    b = cli.parse(["status", "demo", "--namespace", "ns2", "--kubeconfig", "/k", "-o", "yaml"]).ns
    assert (b.namespace, b.kubeconfig, b.output) == ("ns2", "/k", "yaml")
    c = cli.parse(["status", "demo"]).ns
    assert (c.namespace, c.context, c.kubeconfig, c.output) == (None, None, None, "text")


def test_connect_passes_everything_after_the_double_dash() -> None:
    inv = cli.parse(["connect", "demo", "-n", "x", "--", "--key", "a.key", "user", "get", "-n"])
    assert inv.ns.namespace == "x" and inv.beco_args == ["--key", "a.key", "user", "get", "-n"]


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["status"],
        ["connect", "demo"],
        ["status", "demo", "--", "x"],
        ["status", "demo", "-o", "xml"],
        ["verify-log", "demo"],
        ["restart", "demo", "--role", "postgres"],
        ["restart", "--role", "user"],
    ],
)
def test_usage_errors(argv: list[str]) -> None:
    with pytest.raises(cli.UsageError):
        cli.parse(argv)


def test_main_maps_usage_errors_to_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    from beco_kubectl.main import main

    assert main(["verify-log", "demo"]) == cli.USAGE
    assert "--old-head" in capsys.readouterr().err


def test_help_lists_examples_and_exit_codes() -> None:
    text = cli.parser().format_help()
    for code, what in cli.EXIT_CODES.items():
        assert f"  {code}  {what}" in text
    assert "kubectl beco connect demo -n beco-demo -- --key alice.key user get" in text


def test_rotate_keys_help_says_the_sst_keeps_its_log_key(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        cli.parse(["rotate-keys", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "the SST keeps its log signing key" in text


def test_beco_args_plaintext_and_tls() -> None:
    plain = cli.beco_args(4242, cli.ClientFiles("/t/m.json"), ["user", "get"])
    assert plain == ["--endpoint", "127.0.0.1:4242", "--membership", "/t/m.json", "user", "get"]
    files = cli.ClientFiles("/t/m.json", "/t/ca", "/t/crt", "/t/key", "demo.ns.svc")
    tls = cli.beco_args(1, files, ["tree", "head"])
    assert tls[4:] == [
        "--tls-ca",
        "/t/ca",
        "--tls-cert",
        "/t/crt",
        "--tls-key",
        "/t/key",
        "--tls-server-name",
        "demo.ns.svc",
        "tree",
        "head",
    ]
    ca_only = cli.beco_args(1, files, ["tree", "head"], client_cert=False)
    assert ca_only[4:] == ["--tls-ca", "/t/ca", "tree", "head"]
    no_cert = cli.beco_args(1, cli.ClientFiles("/t/m.json", "/t/ca"), ["tree", "head"])
    assert no_cert[4:] == ["--tls-ca", "/t/ca", "tree", "head"]


def test_client_cert_detection_matches_the_beco_cli() -> None:
    """The plugin passes a client certificate exactly when this beco accepts one."""
    from beco_kubectl.forward import beco_has_client_cert
    from beco_node.cli import beco_cli

    help_text = beco_cli._parser().format_help()
    has = all(f in help_text for f in ("--tls-cert", "--tls-key", "--tls-server-name"))
    assert beco_has_client_cert() == has


def _saved(size: int, root: bytes = b"\x01" * 32, ts: int = 5) -> str:
    # as `beco tree head --save` writes it (protobuf JSON: 64-bit ints as strings)
    return json.dumps(
        {
            "tree_size": str(size),
            "root_hash": base64.b64encode(root).decode(),
            "timestamp_ms": str(ts),
            "signature": "c2ln",
            "sst_public_key": "a2V5",
        }
    )


def test_parse_head() -> None:
    h = cli.parse_head(_saved(7, b"\xab" * 32, 99))
    assert h == Head(tree_size=7, root_hash="ab" * 32, timestamp_ms=99)
    for bad in ("", "{", '{"tree_size": "x"}', '{"root_hash": "***"}', "[]"):
        with pytest.raises(ValueError):
            cli.parse_head(bad)


def test_log_verdict() -> None:
    old, grown, shrunk = Head(5), Head(9), Head(3)
    assert cli.log_verdict(old, grown, 0, "")[0] == cli.OK
    code, msg = cli.log_verdict(old, shrunk, None, "")
    assert code == cli.FORK and "rolled back" in msg
    code, msg = cli.log_verdict(old, grown, 1, "beco: verification FAILED: root mismatch\n")
    assert code == cli.FORK and "root mismatch" in msg
    # the network refusing or being unreachable is not a fork: beco's own code comes through
    assert cli.log_verdict(old, grown, 24, "beco: UNAVAILABLE: down\n") == (
        24,
        "beco: UNAVAILABLE: down",
    )
    assert cli.log_verdict(old, grown, 1, "beco: cannot read x\n")[0] == 1


def test_restart_defaults_to_every_role_and_takes_kubectl_options() -> None:
    ns = cli.parse(["restart", "demo"]).ns
    assert (ns.cmd, ns.name, ns.role, ns.wait, ns.token) == ("restart", "demo", "all", False, "")
    ns = cli.parse(
        ["-n", "x", "restart", "demo", "--role", "user", "--wait", "-o", "json", "--context", "c"]
    ).ns
    assert (ns.namespace, ns.role, ns.wait, ns.output, ns.context) == (
        "x",
        "user",
        True,
        "json",
        "c",
    )
    assert "kubectl beco restart demo -n beco-demo --role user --wait" in cli.parser().format_help()
