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
