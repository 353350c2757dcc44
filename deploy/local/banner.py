"""The lines ``make run`` prints once the stack is ready: where things are, what to paste."""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from mall_testing.demo import DemoMall, payment_notification

from deploy.local.settings import BACKENDS, RunSettings

DEMO_OPENID = "demo-shopper"
DEMO_AMOUNT_FEN = 8800
RULE = "─" * 72


def _short(path: Path) -> str:
    """Relative to the working directory when below it: shorter to read and to paste."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def payment_curl(settings: RunSettings, mall: DemoMall) -> str:
    body = payment_notification(mall, openid=DEMO_OPENID, amount_fen=DEMO_AMOUNT_FEN)
    return shlex.join(
        [
            "curl", "-sS", "-o", "/dev/null", "-w", r"%{http_code}\n",
            "-X", "POST", f"{settings.gateway_url}/wechatpay/notifications",
            "-H", "Content-Type: application/json",
            "--data", json.dumps(body, separators=(",", ":")),
        ]
    )  # fmt: skip


def simulator_curl(settings: RunSettings, mall: DemoMall, openid: str) -> str:
    """Ask the WeChat Pay simulator to send a real, signed and encrypted payment notification."""
    store = mall.stores[1]
    body = {
        "appid": mall.appid,
        "mchid": mall.mchid,
        "shop_number": store.shop_number,
        "shop_name": store.tenant_name,
        "openid": openid,
        "amount": DEMO_AMOUNT_FEN,
    }
    return shlex.join(
        [
            "curl", "-sS", "-X", "POST", f"{settings.simulator_url}/control/payments",
            "-H", "Content-Type: application/json", "--data", json.dumps(body),
        ]
    )  # fmt: skip


def points_steps(settings: RunSettings, mall: DemoMall, openid: str = DEMO_OPENID) -> list[str]:
    """How the shopper reads their points: wx.login (a code from the simulator), a session
    from the gateway, then their own points — nobody reads another shopper's."""
    login = json.dumps({"appid": mall.appid, "openid": openid})
    return [
        f"CODE=$(curl -sS -X POST {settings.simulator_url}/control/login-codes "
        f"-H 'Content-Type: application/json' --data '{login}' | python3 -c "
        "'import json,sys; print(json.load(sys.stdin)[\"code\"])')",
        f"TOKEN=$(curl -sS -X POST {settings.gateway_url}/v1/session "
        "-H 'Content-Type: application/json' "
        f'--data "{{\\"appid\\": \\"{mall.appid}\\", \\"code\\": \\"$CODE\\"}}" | python3 -c '
        "'import json,sys; print(json.load(sys.stdin)[\"access_token\"])')",
        f'curl -sS {settings.gateway_url}/v1/me/points -H "Authorization: Bearer $TOKEN"',
    ]


def render(
    settings: RunSettings,
    mall: DemoMall,
    *,
    phases: Sequence[tuple[str, float]],
    postgres_url: str,
    nats_url: str,
    conf: Path,
    cars: Mapping[str, object],
) -> str:
    run_dir = settings.run_dir
    postgres = "embedded, data in " + _short(run_dir / "postgres")
    nats = "embedded, data in " + _short(run_dir / "nats")
    steps, previous = [], 0.0
    for label, at in phases:  # seconds since start, at the end of each phase
        steps.append(f"{label} {at - previous:.2f}")
        previous = at
    lines = [
        RULE,
        f"Mall Circle is ready in {previous:.2f} s  ({', '.join(steps)})",
        f"  gateway     {settings.gateway_url}  (/healthz, /readyz)",
        *(
            f"  {b.name:<10}  gRPC {settings.grpc_target(b.name)}  "
            f"(database {b.name}, {b.port_variable})"
            for b in BACKENDS
        ),
        f"  PostgreSQL  {_without_password(postgres_url)}"
        + ("" if settings.database_url else f"  ({postgres})"),
        f"  NATS        {nats_url}" + ("" if settings.nats_url else f"  ({nats})"),
        f"  demo mall   {mall.mall_id}  ({mall.name}, appid {mall.appid})",
        f"  car park    {mall.car_park_id}  ({mall.car_park_name}): the car-park simulator drove"
        f" {json.dumps(dict(cars), ensure_ascii=False)}",
        f"  services    {_short(Path(sys.executable).with_name('supervisorctl'))}"
        f" -c {_short(conf)} status",
        f"  logs        {_short(run_dir)}/supervisord.log, postgres/postgres.log, nats/nats.log",
        "",
        f"A shopper pays {DEMO_AMOUNT_FEN / 100:.2f} yuan at {mall.stores[0].tenant_name}"
        " (prints 204; the same body again is de-duplicated):",
        f"  {payment_curl(settings, mall)}",
        f"Their points (+{DEMO_AMOUNT_FEN // 100} once member and points have handled it), as"
        " the mini-program reads them: log in, then ask for their own:",
        *(f"  {step}" for step in points_steps(settings, mall)),
        "",
        f"Through WeChat Pay itself (the simulator at {settings.simulator_url} signs, encrypts"
        " and retries like the platform; points are synced back to it):",
        f"  {simulator_curl(settings, mall, 'sim-shopper')}",
        *(f"  {step}" for step in points_steps(settings, mall, "sim-shopper")),
        f"  curl -sS {settings.simulator_url}/control/points-syncs",
        "",
        "Ctrl-C stops everything.",
        RULE,
    ]
    return "\n".join(lines)
