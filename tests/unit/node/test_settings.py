from pathlib import Path

import pytest
from beco_node import settings


def test_flags_env_and_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BECO_SKEW_MS", "5000")
    monkeypatch.setenv("BECO_INSECURE", "true")
    s = settings.parse(["--role", "user", "--vote-timeout-ms", "1234"])
    assert s.role == "user" and s.insecure
    assert s.skew_ms == 5000  # from the environment
    assert s.vote_timeout_ms == 1234  # from the flag
    assert s.membership == "membership.json" and s.max_message_bytes == 65536


def test_flag_wins_over_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BECO_SKEW_MS", "5000")
    assert settings.parse(["--role", "user", "--insecure", "--skew-ms", "7"]).skew_ms == 7


def test_plaintext_needs_insecure(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        settings.parse(["--role", "user"])
    assert "--insecure" in capsys.readouterr().err


def test_role_and_sst_database_required(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        settings.parse(["--role", "guardian", "--insecure"])
    with pytest.raises(SystemExit):
        settings.parse(["--role", "sst", "--insecure"])
    assert "--database-url" in capsys.readouterr().err


def test_health_listen_off_and_advertise_unset_by_default() -> None:
    s = settings.parse(["--role", "user", "--insecure"])
    assert s.health_listen == "off" and s.advertise == ""


@pytest.mark.parametrize(
    ("address", "wildcard"),
    [
        ("0.0.0.0:9001", True),
        ("[::]:9001", True),
        (":9001", True),
        ("127.0.0.1:9001", False),
        ("[::1]:9001", False),
        ("user-a-0.beco-demo-user-a.ns.svc:9001", False),
    ],
)
def test_wildcard_addresses(address: str, wildcard: bool) -> None:
    assert settings.is_wildcard(address) is wildcard


def test_a_wildcard_advertise_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        settings.parse(["--role", "user", "--insecure", "--advertise", "0.0.0.0:9001"])
    assert "wildcard" in capsys.readouterr().err


def test_staleness_bound_and_sync_interval(capsys: pytest.CaptureFixture[str]) -> None:
    s = settings.parse(["--role", "user", "--insecure"])
    assert s.staleness_bound_ms == settings.DEFAULT_STALENESS_BOUND_MS
    assert s.sync_interval_ms == settings.DEFAULT_SYNC_INTERVAL_MS
    s = settings.parse(["--role", "user", "--insecure", "--staleness-bound-ms", "3000"])
    assert s.staleness_bound_ms == 3000
    with pytest.raises(SystemExit):  # catching up less often than the bound: refused
        settings.parse(["--role", "user", "--insecure", "--sync-interval-ms", "5000"])
    assert "--staleness-bound-ms" in capsys.readouterr().err


def test_every_node_setting_is_in_the_readme() -> None:
    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text()
    rows = [line.split(" | ")[0] for line in readme.splitlines() if line.startswith("| `--")]
    missing = [flag for flag, *_ in settings._SPEC if not any(f"`--{flag}`" in r for r in rows)]
    assert not missing, f"README.md's settings table lacks {missing}"
