"""Accept one verified WeChat Pay notice: know the store, refuse a reused id, publish.

Plain functions whose dependencies are parameters; the webhook view calls ``accept`` once it
has verified, decrypted and parsed a notification.
"""

from __future__ import annotations

from typing import Protocol

from kit.errors import NotFound, Unavailable

from gateway.adapters.directory import ShopRef
from gateway.domain.notifications import Notice, shop_of


class ShopDirectory(Protocol):
    """The gateway's copy of the directory (``gateway.adapters.directory.Directory``)."""

    def shop(self, appid: str, shop_number: str) -> ShopRef | None: ...

    def mall_for_appid(self, appid: str) -> str | None: ...


class Guard(Protocol):
    async def admit(self, notification_id: str, said: str) -> None: ...


class Publisher(Protocol):
    async def publish(self, notice: Notice, *, mall_id: str = "") -> bool: ...


def mall_of(notice: Notice, shops: ShopDirectory) -> str:
    """The mall a notice belongs to; ``unknown_shop`` for a store the directory lacks.

    Payments and refunds name their store (appid + shop_number): one the directory does not
    know cannot be attributed, so it is refused and the platform retries it (for about a
    day), which gives ops that long to onboard the store. An authorisation names only the
    mall's appid: its mall is a hint, empty when unknown (member decides).
    """
    where = shop_of(notice)
    if where is None:
        return shops.mall_for_appid(notice.appid) or ""
    shop = shops.shop(*where)
    if shop is None:
        appid, shop_number = where
        raise NotFound(
            "unknown_shop", f"no store with shop_number {shop_number!r} in the mall of {appid!r}"
        )
    return shop.mall_id


async def accept(
    notice: Notice,
    said: str,
    *,
    shops: ShopDirectory,
    directory_ready: bool,
    guard: Guard,
    publisher: Publisher,
) -> None:
    """Publish ``notice`` once it is known to be new or a faithful repeat.

    ``said`` fingerprints what the notification reported. Raises ``AppError``: the caller
    answers the platform with a refusal (it retries) and nothing was published.
    """
    if not directory_ready:
        # Not a refusal: the local directory copy is still loading; the retry will know.
        raise Unavailable("directory_loading", "directory copy not loaded yet; retry later")
    mall_id = mall_of(notice, shops)
    await guard.admit(notice.notification_id, said)
    await publisher.publish(notice, mall_id=mall_id)
