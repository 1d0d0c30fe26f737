"""The agent's side of the resolver: a real `python -m shoal.dns` child, fed over its pipe,
started again with everything it knew when it dies (no root: no namespace is attached here)."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from shoal.dns.process import DnsOptions, Resolver, ResolverError
from shoal.model import view as nv
from tests.unit.dns_views import base_view


async def test_feeds_the_view_and_restarts_with_it() -> None:
    res = Resolver(DnsOptions(upstreams=("192.0.2.1",), loop="asyncio"))
    await res.start()
    try:
        res.set_view(base_view())
        stats = await res.stats()
        assert stats["networks"] == 3 and stats["listeners"] == 0
        assert res.proc is not None
        first = res.proc.pid
        os.kill(first, signal.SIGKILL)

        async def back() -> dict:
            while True:
                try:
                    return await res.stats()
                except ResolverError:
                    await asyncio.sleep(0.05)
        stats = await asyncio.wait_for(back(), 10)
        assert res.proc.pid != first and res.restarts == 1
        assert stats["networks"] == 3  # the view was given again
        with pytest.raises(ResolverError, match="does not exist"):
            await res.attach("client", "shoal-no-such-namespace")
    finally:
        await res.stop()
    assert res.proc.returncode is not None  # ended with its stdin


async def test_delta_and_options() -> None:
    assert DnsOptions(upstreams=("1.1.1.1",), vip_ttl=30).argv()[:3] == [
        "--upstream=1.1.1.1", "--vip-ttl", "30"]
    res = Resolver(DnsOptions(loop="asyncio"))
    await res.start()
    try:
        view = base_view()
        res.set_view(view)
        new = base_view()
        del new["networks"]["n3"]
        res.apply_delta(nv.diff(view, new), new)  # type: ignore[arg-type]
        assert (await res.stats())["networks"] == 2
    finally:
        await res.stop()
