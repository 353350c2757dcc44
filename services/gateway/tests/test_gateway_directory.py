"""The gateway's directory copy: indexes follow every change, including moves and deletes."""

from __future__ import annotations

from gateway.adapters.directory import Directory, ShopRef
from mall.member.v1 import directory_pb2


def mall(mall_id: str, appid: str) -> directory_pb2.Mall:
    return directory_pb2.Mall(mall_id=mall_id, appid=appid, name=mall_id)


def store(mall_id: str, store_id: str, shop_number: str) -> directory_pb2.Store:
    return directory_pb2.Store(
        mall_id=mall_id, store_id=store_id, tenant_id=f"t-{store_id}", shop_number=shop_number
    )


def test_a_shop_is_found_through_its_malls_appid() -> None:
    d = Directory.from_entries([mall("m1", "wx1")], [store("m1", "s1", "SHOP-1")])

    assert d.shop("wx1", "SHOP-1") == ShopRef("m1", "t-s1", "s1")
    assert d.mall_for_appid("wx1") == "m1"


def test_shops_are_kept_apart_per_mall() -> None:
    d = Directory.from_entries(
        [mall("m1", "wx1"), mall("m2", "wx2")],
        [store("m1", "s1", "SHOP-1"), store("m2", "s9", "SHOP-1")],
    )

    assert d.shop("wx1", "SHOP-1") == ShopRef("m1", "t-s1", "s1")
    assert d.shop("wx2", "SHOP-1") == ShopRef("m2", "t-s9", "s9")
    assert d.shop("wx3", "SHOP-1") is None
    assert d.shop("wx1", "SHOP-2") is None


def test_a_store_that_changes_its_shop_number_is_only_found_under_the_new_one() -> None:
    d = Directory.from_entries([mall("m1", "wx1")], [store("m1", "s1", "SHOP-1")])

    d.apply("store.m1.s1", store("m1", "s1", "SHOP-7").SerializeToString())

    assert d.shop("wx1", "SHOP-1") is None
    assert d.shop("wx1", "SHOP-7") == ShopRef("m1", "t-s1", "s1")


def test_deleted_entries_are_forgotten_and_a_new_appid_replaces_the_old() -> None:
    d = Directory.from_entries([mall("m1", "wx1")], [store("m1", "s1", "SHOP-1")])

    d.apply("mall.m1", mall("m1", "wx-new").SerializeToString())
    assert d.shop("wx1", "SHOP-1") is None
    assert d.shop("wx-new", "SHOP-1") == ShopRef("m1", "t-s1", "s1")

    d.apply("store.m1.s1", None)
    assert d.shop("wx-new", "SHOP-1") is None
