"""Mini-program login: ``wx.login`` codes (minted by the control API) exchanged at
``/sns/jscode2session`` the way api.weixin.qq.com answers: once, for the right app and secret."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from wechatpay_simulator.app import Running, serve
from wechatpay_simulator.cli import parser, settings_from
from wechatpay_simulator.config import ConfigError, MiniProgram, Settings
from wechatpay_simulator.keyfolder import KeyFolder

APPID = "wx5imlogin0000001"
SECRET = "0123456789abcdef0123456789abcdef"
OTHER_APPID = "wx5imlogin0000002"


@pytest.fixture
async def sim() -> AsyncIterator[Running]:
    settings = Settings.create(
        miniprograms=(MiniProgram(APPID, SECRET), MiniProgram(OTHER_APPID, "other-secret")),
        login_code_ttl_s=60,
    )
    async with serve(settings) as running:
        yield running


async def mint(sim: Running, **body: Any) -> aiohttp.ClientResponse:
    async with aiohttp.ClientSession() as http:
        resp = await http.post(f"{sim.url}/control/login-codes", json=body)
        await resp.read()
        return resp


async def code_for(sim: Running, openid: str, **extra: str) -> str:
    resp = await mint(sim, appid=extra.pop("appid", APPID), openid=openid, **extra)
    assert resp.status == 200
    code: str = (await resp.json())["code"]
    return code


async def exchange(sim: Running, code: str, **params: str) -> tuple[int, str, dict[str, Any]]:
    query = {
        "appid": APPID,
        "secret": SECRET,
        "js_code": code,
        "grant_type": "authorization_code",
        **params,
    }
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{sim.url}/sns/jscode2session", params=query) as resp,
    ):
        # Like the real API: JSON labelled text/plain.
        return resp.status, resp.content_type, json.loads(await resp.text())


async def test_a_code_gives_the_openid_and_unionid_once(sim: Running) -> None:
    code = await code_for(sim, "o-shopper-1", unionid="u-shopper-1")

    status, content_type, body = await exchange(sim, code)
    assert (status, content_type) == (200, "text/plain")
    assert body["openid"] == "o-shopper-1"
    assert body["unionid"] == "u-shopper-1"
    assert body["session_key"]

    _, _, again = await exchange(sim, code)
    assert again == {"errcode": 40163, "errmsg": "code been used"}


async def test_without_a_unionid_the_answer_has_none(sim: Running) -> None:
    _, _, body = await exchange(sim, await code_for(sim, "o-shopper-2"))

    assert body["openid"] == "o-shopper-2"
    assert "unionid" not in body


async def test_an_unknown_code_is_invalid(sim: Running) -> None:
    status, _, body = await exchange(sim, "not-a-code")

    assert status == 200
    assert body == {"errcode": 40029, "errmsg": "invalid code"}


async def test_a_code_of_another_mini_program_is_invalid(sim: Running) -> None:
    code = await code_for(sim, "o-shopper-3", appid=OTHER_APPID)

    _, _, body = await exchange(sim, code)
    assert body["errcode"] == 40029


async def test_an_expired_code_is_invalid(sim: Running) -> None:
    code = await code_for(sim, "o-shopper-4")
    login = sim.state.login_codes[code]
    sim.state.login_codes[code] = type(login)(login.appid, login.openid, None, 0.0)

    _, _, body = await exchange(sim, code)
    assert body["errcode"] == 40029


@pytest.mark.parametrize(
    ("params", "errcode"),
    [
        ({"secret": "wrong"}, 40125),
        ({"appid": "wx-nobody"}, 40013),
        ({"grant_type": "client_credential"}, 40002),
    ],
)
async def test_wrong_app_credentials_are_refused_and_keep_the_code(
    sim: Running, params: dict[str, str], errcode: int
) -> None:
    code = await code_for(sim, "o-shopper-5")

    _, _, body = await exchange(sim, code, **params)
    assert body["errcode"] == errcode
    _, _, ok = await exchange(sim, code)
    assert ok["openid"] == "o-shopper-5"


async def test_codes_are_only_minted_for_known_mini_programs(sim: Running) -> None:
    resp = await mint(sim, appid="wx-nobody", openid="o-x")
    assert resp.status == 400

    resp = await mint(sim, appid=APPID)
    assert resp.status == 400


async def test_an_injected_fault_fails_the_exchange(sim: Running) -> None:
    async with aiohttp.ClientSession() as http:
        resp = await http.post(
            f"{sim.url}/control/faults", json={"jscode2session": {"fail_next": 1, "status": 503}}
        )
        assert resp.status == 200
    code = await code_for(sim, "o-shopper-6")

    status, _, body = await exchange(sim, code)
    assert status == 503
    assert body["errcode"] == -1
    _, _, ok = await exchange(sim, code)
    assert ok["openid"] == "o-shopper-6"


def test_mini_programs_come_from_flags_the_config_file_and_the_key_folder(
    tmp_path: Path,
) -> None:
    (tmp_path / "sim.json").write_text(json.dumps({"miniprograms": {"wx-file": "s-file"}}))
    args = parser().parse_args(
        ["--config", str(tmp_path / "sim.json"), "--miniprogram", "wx-flag:s-flag",
         "--write-keys", str(tmp_path / "keys")]
    )  # fmt: skip
    settings = settings_from(args)
    assert settings.miniprogram_secrets() == {"wx-file": "s-file", "wx-flag": "s-flag"}

    KeyFolder(tmp_path / "keys").write(settings)
    written = json.loads((tmp_path / "keys" / "miniprograms.json").read_text())
    assert written == {"wx-file": "s-file", "wx-flag": "s-flag"}
    assert (tmp_path / "keys" / "miniprograms.json").stat().st_mode & 0o077 == 0
    # A restart with only the key folder keeps the secrets (the gateway keeps working).
    again = settings_from(parser().parse_args(["--write-keys", str(tmp_path / "keys")]))
    assert again.miniprogram_secrets() == written


def test_without_mini_programs_the_demo_mall_has_one() -> None:
    settings = settings_from(parser().parse_args([]))

    assert list(settings.miniprogram_secrets()) == ["wxd930ea5d5a258f4f"]


def test_a_bad_miniprogram_flag_is_refused() -> None:
    with pytest.raises(ConfigError, match="APPID:SECRET"):
        settings_from(parser().parse_args(["--miniprogram", "wx-no-secret"]))
