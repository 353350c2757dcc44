"""kit.settings: a bad environment stops the process with a message naming the variable."""

from __future__ import annotations

import pytest
from kit.settings import ServiceSettings, load_settings
from pydantic import Field, SecretStr


class _WithSecret(ServiceSettings):
    apiv3_key: SecretStr = Field(min_length=32)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only what a test sets: the developer's own DATABASE_URL etc. must not leak in."""
    for name in [*ServiceSettings.model_fields, *_WithSecret.model_fields]:
        monkeypatch.delenv(name.upper(), raising=False)


def _exit_message(capsys: pytest.CaptureFixture[str], cls: type[ServiceSettings]) -> str:
    with pytest.raises(SystemExit) as exited:
        load_settings(cls)
    assert exited.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    return captured.err


def test_defaults_and_valid_values_load(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://points@db:5432/points")
    monkeypatch.setenv("GRPC_PORT", "0")
    monkeypatch.setenv("LOG_LEVEL", "debug")

    settings = load_settings(ServiceSettings)

    assert settings.database_url == "postgresql://points@db:5432/points"
    assert settings.grpc_port == 0
    assert settings.log_level == "debug"
    assert settings.nats_url == "nats://127.0.0.1:4222"


def test_bad_database_url_exits_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATABASE_URL", "foo")

    err = _exit_message(capsys, ServiceSettings)

    assert err.splitlines()[0] == "invalid configuration for ServiceSettings:"
    [line] = [line for line in err.splitlines() if "DATABASE_URL" in line]
    assert "'foo'" in line
    assert len(err.splitlines()) == 2, err


def test_out_of_range_port_exits_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GRPC_PORT", "99999")

    err = _exit_message(capsys, ServiceSettings)

    [line] = [line for line in err.splitlines() if "GRPC_PORT" in line]
    assert "65535" in line
    assert "'99999'" in line


def test_every_bad_variable_gets_its_own_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATABASE_URL", "foo")
    monkeypatch.setenv("GRPC_PORT", "99999")
    monkeypatch.setenv("LOG_LEVEL", "verbose")

    err = _exit_message(capsys, ServiceSettings)

    named = sorted(line.split(":")[0].strip() for line in err.splitlines()[1:])
    assert named == ["DATABASE_URL", "GRPC_PORT", "LOG_LEVEL"]


def test_messages_never_echo_secrets(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A missing variable used to print every other configured value (pydantic's input for a
    # missing field is the whole dict), and a bad DSN printed its password.
    monkeypatch.setenv("DATABASE_URL", "mysql://points:hunter2@db:5432/points")

    err = _exit_message(capsys, _WithSecret)

    assert "hunter2" not in err
    assert "APIV3_KEY: Field required (not set)" in err
    [dsn_line] = [line for line in err.splitlines() if "DATABASE_URL" in line]
    assert "mysql://points:***@db:5432/points" in dsn_line

    monkeypatch.setenv("DATABASE_URL", "postgresql://points:hunter2@db:5432/points")
    monkeypatch.setenv("APIV3_KEY", "too-short-but-still-secret")

    err = _exit_message(capsys, _WithSecret)

    assert "too-short-but-still-secret" not in err
    [key_line] = [line for line in err.splitlines() if "APIV3_KEY" in line]
    assert "value hidden" in key_line
