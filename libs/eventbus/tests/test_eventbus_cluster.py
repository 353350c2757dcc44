"""Replicas on a real three-node JetStream cluster (nats-server from its PyPI wheel).

Production runs NATS clustered with streams and the directory bucket at 3 replicas
(JETSTREAM_REPLICAS=3): what a single test server cannot show is shown here.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator

import nats
import pytest
from eventbus.streams import ensure_streams
from kit.kvmirror import DIRECTORY_BUCKET, open_bucket
from mall_testing.embedded import EmbeddedNats, free_port
from nats.js.api import KeyValueConfig
from nats.js.client import JetStreamContext

NODES = 3
pytestmark = pytest.mark.integration  # starts its own servers


@pytest.fixture(scope="module")
def cluster() -> Iterator[list[str]]:
    """Three nats-servers routed to each other; their client URLs."""
    routes = [free_port() for _ in range(NODES)]
    route_urls = ",".join(f"nats://127.0.0.1:{p}" for p in routes)
    with contextlib.ExitStack() as stack:
        servers = [
            stack.enter_context(
                EmbeddedNats(
                    extra_args=[
                        "--server_name",
                        f"n{n}",
                        "--cluster_name",
                        "mall",
                        "--cluster",
                        f"nats://127.0.0.1:{routes[n]}",
                        "--routes",
                        route_urls,
                    ]
                )
            )
            for n in range(NODES)
        ]
        yield [s.url for s in servers]


@contextlib.asynccontextmanager
async def _jetstream(urls: list[str]) -> AsyncIterator[JetStreamContext]:
    nc = await nats.connect(urls)
    try:
        js = nc.jetstream()
        # The cluster elects its JetStream meta leader after the servers are up.
        for _ in range(300):  # up to 30 s
            try:
                await js.account_info()
                break
            except Exception:  # not ready yet: no meta leader, no responders
                await asyncio.sleep(0.1)
        else:
            raise AssertionError("the JetStream cluster never became ready")
        yield js
    finally:
        await nc.close()


async def _replicas(js: JetStreamContext, stream: str) -> int:
    return (await js.stream_info(stream)).config.num_replicas or 1


async def test_streams_and_the_directory_bucket_get_the_configured_replicas(
    cluster: list[str],
) -> None:
    async with _jetstream(cluster) as js:
        await ensure_streams(js, "PAYMENTS", "MEMBER", replicas=3)
        await open_bucket(js, DIRECTORY_BUCKET, replicas=3)

        assert await _replicas(js, "PAYMENTS") == 3
        assert await _replicas(js, "MEMBER") == 3
        assert await _replicas(js, f"KV_{DIRECTORY_BUCKET}") == 3
        # Opening it again (every process does at start) changes nothing.
        kv = await open_bucket(js, DIRECTORY_BUCKET, replicas=3)
        await kv.put("mall.m1", b"kept")
        assert (await (await open_bucket(js, DIRECTORY_BUCKET)).get("mall.m1")).value == b"kept"


async def test_a_bucket_created_with_one_copy_is_raised_to_the_configured_replicas(
    cluster: list[str],
) -> None:
    """A bucket first created by a process that asked for no replicas (an older release, a
    mirror starting before the writer) is brought up to three, keeping its content."""
    async with _jetstream(cluster) as js:
        single = await js.create_key_value(KeyValueConfig(bucket="RAISED", history=1))
        await single.put("k", b"v")
        assert await _replicas(js, "KV_RAISED") == 1

        raised = await open_bucket(js, "RAISED", replicas=3)

        assert await _replicas(js, "KV_RAISED") == 3
        assert (await raised.get("k")).value == b"v"
        # Asking for fewer never lowers it.
        await open_bucket(js, "RAISED", replicas=1)
        assert await _replicas(js, "KV_RAISED") == 3
