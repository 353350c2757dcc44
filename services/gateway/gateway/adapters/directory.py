"""The gateway's copy of the mall directory: which mall an appid is, which store a shop is.

Fed from member's DIRECTORY key-value bucket (``kit.kvmirror.KvMirror`` calls ``apply`` for
every entry, the current content first, then each change), so the payment path never asks
member for directory data.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from mall.member.v1 import directory_pb2


@dataclass(frozen=True)
class ShopRef:
    mall_id: str
    tenant_id: str
    store_id: str


class Directory:
    def __init__(self) -> None:
        self._mall_by_appid: dict[str, str] = {}
        self._appid_by_mall: dict[str, str] = {}
        self._stores: dict[str, directory_pb2.Store] = {}  # key → store
        self._shops: dict[tuple[str, str], ShopRef] = {}  # (mall_id, shop_number) → store

    @classmethod
    def from_entries(
        cls, malls: Iterable[directory_pb2.Mall], stores: Iterable[directory_pb2.Store] = ()
    ) -> Directory:
        """A directory built by hand (tests, tools)."""
        directory = cls()
        for mall in malls:
            directory.apply(f"mall.{mall.mall_id}", mall.SerializeToString())
        for store in stores:
            directory.apply(f"store.{store.mall_id}.{store.store_id}", store.SerializeToString())
        return directory

    def apply(self, key: str, value: bytes | None) -> None:
        kind = key.split(".", 1)[0]
        if kind == "mall":
            self._apply_mall(key.removeprefix("mall."), value)
        elif kind == "store":
            self._apply_store(key, value)

    def _apply_mall(self, mall_id: str, value: bytes | None) -> None:
        old_appid = self._appid_by_mall.pop(mall_id, None)
        if old_appid is not None:
            self._mall_by_appid.pop(old_appid, None)
        if value is not None:
            mall = directory_pb2.Mall.FromString(value)
            self._mall_by_appid[mall.appid] = mall.mall_id
            self._appid_by_mall[mall.mall_id] = mall.appid

    def _apply_store(self, key: str, value: bytes | None) -> None:
        old = self._stores.pop(key, None)
        if old is not None:
            self._shops.pop((old.mall_id, old.shop_number), None)
        if value is not None:
            store = directory_pb2.Store.FromString(value)
            self._stores[key] = store
            self._shops[(store.mall_id, store.shop_number)] = ShopRef(
                store.mall_id, store.tenant_id, store.store_id
            )

    def mall_for_appid(self, appid: str) -> str | None:
        return self._mall_by_appid.get(appid)

    def appid_for_mall(self, mall_id: str) -> str | None:
        """The mall's mini-program appid (e.g. what a pay-score deduction is made under)."""
        return self._appid_by_mall.get(mall_id)

    def store_name(self, mall_id: str, store_id: str) -> str | None:
        """The store's display name (e-receipts), if the directory copy has the store."""
        store = self._stores.get(f"store.{mall_id}.{store_id}")
        return store.name if store is not None else None

    def shop(self, appid: str, shop_number: str) -> ShopRef | None:
        """The store where a shopper paid, if this appid is a mall and the shop is one of its."""
        mall_id = self._mall_by_appid.get(appid)
        if mall_id is None:
            return None
        return self._shops.get((mall_id, shop_number))
