"""WECHATPAY_MERCHANTS_FILE: checked at start, with errors that say what is wrong and never
show a secret."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from gateway.adapters.merchants import load_merchants
from gateway.config import Settings
from kit.settings import load_settings

APIV3_KEY = "secret-APIv3-key-0123456789abcde"
KEY_ID = "PUB_KEY_ID_0114232134912410000000000000"


@pytest.fixture(scope="module")
def pem() -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def merchant(**fields: Any) -> dict[str, Any]:
    return {
        "mchid": "1900000109",
        "apiv3_key": APIV3_KEY,
        "platform_public_keys": {KEY_ID: "pub_key.pem"},
        **fields,
    }


def write(folder: Path, pem: bytes, merchants: Any) -> Path:
    (folder / "pub_key.pem").write_bytes(pem)
    path = folder / "merchants.json"
    path.write_text(merchants if isinstance(merchants, str) else json.dumps(merchants))
    return path


def error_of(path: Path) -> str:
    with pytest.raises(ValueError, match=r".") as caught:
        load_merchants(path)
    message = str(caught.value)
    assert APIV3_KEY not in message
    return message


def test_merchants_load_with_keys_read_beside_the_file(tmp_path: Path, pem: bytes) -> None:
    path = write(tmp_path, pem, [merchant(), merchant(mchid="1900000200")])

    merchants = load_merchants(path)

    assert sorted(merchants) == ["1900000109", "1900000200"]
    provider = merchants["1900000109"]
    assert provider.apiv3_key == APIV3_KEY
    assert list(provider.platform_keys) == [KEY_ID]
    assert APIV3_KEY not in repr(provider)


@pytest.mark.parametrize("key", ["too-short", APIV3_KEY + "x", "密钥" * 8])
def test_an_apiv3_key_of_the_wrong_length_is_refused(tmp_path: Path, pem: bytes, key: str) -> None:
    message = error_of(write(tmp_path, pem, [merchant(apiv3_key=key)]))

    assert "merchants[0].apiv3_key" in message
    assert "32" in message
    assert key not in message


def test_an_unreadable_key_file_is_named(tmp_path: Path, pem: bytes) -> None:
    message = error_of(write(tmp_path, pem, [merchant(platform_public_keys={KEY_ID: "gone.pem"})]))

    assert "merchant 1900000109" in message
    assert str(tmp_path / "gone.pem") in message


def test_a_key_file_that_is_not_a_pem_key_is_named(tmp_path: Path, pem: bytes) -> None:
    (tmp_path / "junk.pem").write_text(
        "-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n"
    )

    message = error_of(write(tmp_path, pem, [merchant(platform_public_keys={KEY_ID: "junk.pem"})]))

    assert "junk.pem is not a PEM RSA public key or certificate" in message


@pytest.mark.parametrize(
    ("merchants", "expected"),
    [
        ("not json", "Invalid JSON"),
        ({"mchid": "1"}, "merchants: Input should be a valid array"),
        ([merchant(mchid="19000x")], "merchants[0].mchid"),
        ([merchant(platform_public_keys={})], "merchants[0].platform_public_keys"),
        ([merchant(platform_public_keys={"bad serial!": "pub_key.pem"})], "'bad serial!'"),
        ([merchant(notify_url="https://x")], "merchants[0].notify_url: Extra inputs"),
        ([{"mchid": "1900000109"}], "merchants[0].apiv3_key: Field required"),
        ([merchant(), merchant()], "merchant 1900000109 is listed twice"),
    ],
)
def test_a_bad_file_says_where(tmp_path: Path, pem: bytes, merchants: Any, expected: str) -> None:
    assert expected in error_of(write(tmp_path, pem, merchants))


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    assert f"cannot read {tmp_path / 'nope.json'}" in error_of(tmp_path / "nope.json")


# -- as settings ---------------------------------------------------------------------------


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)


@pytest.mark.usefixtures("clean_environment")
def test_the_settings_default_to_no_merchant_and_no_unsigned_route() -> None:
    settings = load_settings(Settings)

    assert settings.wechatpay_merchants_file is None
    assert settings.wechatpay_accept_unsigned is False
    assert settings.wechatpay_max_skew_s == 300


@pytest.mark.usefixtures("clean_environment")
def test_the_settings_read_the_merchants_file_at_start(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, pem: bytes
) -> None:
    monkeypatch.setenv("WECHATPAY_MERCHANTS_FILE", str(write(tmp_path, pem, [merchant()])))
    monkeypatch.setenv("WECHATPAY_ACCEPT_UNSIGNED", "true")

    settings = load_settings(Settings)

    assert settings.wechatpay_merchants_file == tmp_path / "merchants.json"
    assert settings.wechatpay_accept_unsigned is True


@pytest.mark.usefixtures("clean_environment")
def test_a_bad_merchants_file_stops_the_start_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path, pem: bytes
) -> None:
    path = write(tmp_path, pem, [merchant(apiv3_key=APIV3_KEY[:31])])
    monkeypatch.setenv("WECHATPAY_MERCHANTS_FILE", str(path))

    with pytest.raises(SystemExit) as exited:
        load_settings(Settings)

    assert exited.value.code == 2
    err = capsys.readouterr().err
    [line] = [line for line in err.splitlines() if "WECHATPAY_MERCHANTS_FILE" in line]
    assert "apiv3_key" in line
    assert "32 characters" in line
    assert APIV3_KEY[:31] not in err
