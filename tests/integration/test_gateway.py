"""The gateway client against the gateway simulator over real HTTP on loopback (no mocks):
every response class of contract §5.2, idempotency, failure rates and the CLI process."""

from __future__ import annotations

import json
import socket
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from lendstream.embedded import free_port
from lendstream.gateway import GatewayClient
from lendstream.gateway_sim import GatewaySimulator, SimulatorConfig, serving, start_process
from lendstream.sagas.payout import CallGateway, payout_id_of

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def call(loan_id: str = "L1", attempt: int = 1) -> CallGateway:
    return CallGateway(payout_id_of(loan_id), loan_id, "C1", 12_345, "EUR", attempt)


@pytest.fixture
async def simulator() -> AsyncIterator[tuple[GatewaySimulator, str]]:
    sim = GatewaySimulator(SimulatorConfig(hang_seconds=2.0))
    async with serving(sim) as url:
        yield sim, url


@pytest.fixture
async def client(simulator: tuple[GatewaySimulator, str]) -> AsyncIterator[GatewayClient]:
    async with GatewayClient(simulator[1], connect_timeout=1.0, read_timeout=0.5) as gateway:
        yield gateway


async def control(url: str, **body: Any) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, session.post(f"{url}/control", json=body) as r:
        assert r.status == 200, await r.text()
        return dict(await r.json())


async def recorded(url: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, session.get(f"{url}/payouts") as response:
        return dict(await response.json())


async def test_accepted_payout_is_sent_and_recorded(simulator, client) -> None:  # type: ignore[no-untyped-def]
    _, url = simulator
    result = await client.pay(call())
    assert (result.kind, result.reason) == ("sent", "HTTP 201")
    assert (await recorded(url))["payouts"] == {"payout:L1": {"accepted": 1, "requests": 1}}


async def test_same_key_twice_is_409_and_still_sent_once(simulator, client) -> None:  # type: ignore[no-untyped-def]
    _, url = simulator
    first, second = await client.pay(call()), await client.pay(call(attempt=2))
    assert first.sent and second.sent
    assert second.reason == "HTTP 409"
    assert (await recorded(url))["payouts"]["payout:L1"] == {"accepted": 1, "requests": 2}


@pytest.mark.parametrize(
    ("mode", "kind", "reason"),
    [
        ("error", "transient", "gateway answered HTTP 503"),
        ("timeout", "transient", "gateway timed out"),
        ("refuse", "transient", "gateway closed the connection"),
        ("reject", "permanent", "gateway answered HTTP 422"),
    ],
)
async def test_each_failure_mode_gives_its_result_class(
    simulator, client, mode, kind, reason
) -> None:  # type: ignore[no-untyped-def]
    _, url = simulator
    await control(url, loans={"L1": [mode]})
    result = await client.pay(call())
    assert (result.kind, result.reason) == (kind, reason)
    assert (await recorded(url))["payouts"] == {}
    retried = await client.pay(call(attempt=2))  # the plan is used up: normal service
    assert retried.sent
    assert (await recorded(url))["payouts"]["payout:L1"]["accepted"] == 1


async def test_transient_failures_then_success_pay_once(simulator, client) -> None:  # type: ignore[no-untyped-def]
    _, url = simulator
    await control(url, loans={"L7": ["error", "refuse", "error"]})
    results = [(await client.pay(call("L7", n))).kind for n in range(1, 5)]
    assert results == ["transient", "transient", "transient", "sent"]
    assert (await recorded(url))["payouts"]["payout:L7"] == {"accepted": 1, "requests": 4}


async def test_a_refused_connection_is_transient() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    async with GatewayClient(url, connect_timeout=1.0, read_timeout=1.0) as gateway:
        result = await gateway.pay(call())
    assert result.kind == "transient"
    assert result.reason.startswith("cannot connect to the gateway")


async def test_failure_rates_are_seeded_and_nothing_is_paid_twice(simulator, client) -> None:  # type: ignore[no-untyped-def]
    _, url = simulator
    await control(url, transient_rate=0.2, permanent_rate=0.02, seed=7,
                  transient_modes=["error", "refuse"])  # fmt: skip
    kinds = [(await client.pay(call(f"L{n}"))).kind for n in range(300)]
    for n, kind in enumerate(kinds):  # retry each transient failure until it settles
        attempts = 1
        while kind == "transient" and attempts < 20:
            attempts += 1
            kind = (await client.pay(call(f"L{n}", attempts))).kind
        kinds[n] = kind
    payouts = (await recorded(url))["payouts"]
    assert all(record["accepted"] == 1 for record in payouts.values())
    assert len(payouts) == kinds.count("sent")
    assert 0 < kinds.count("permanent") < 30  # about 2% of ~370 requests
    assert "transient" not in kinds


async def test_bad_requests_and_control_are_400(simulator) -> None:  # type: ignore[no-untyped-def]
    _, url = simulator
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{url}/payouts", json={"payout_id": "x"}) as response:
            assert response.status == 400  # no Idempotency-Key
        async with session.post(f"{url}/control", json={"mode": "x"}) as response:
            assert response.status == 400
        async with session.post(f"{url}/control", json={"loans": {"L1": "boom"}}) as response:
            assert response.status == 400
        async with session.post(f"{url}/control", json={"transient_rate": 2}) as response:
            assert response.status == 400


async def test_reset_forgets_payouts(simulator, client) -> None:  # type: ignore[no-untyped-def]
    _, url = simulator
    await client.pay(call())
    async with aiohttp.ClientSession() as session, session.post(f"{url}/reset") as response:
        assert response.status == 200
    assert (await recorded(url))["payouts"] == {}
    assert (await client.pay(call())).reason == "HTTP 201"


def test_the_cli_process_serves_and_stops_by_pid() -> None:
    process = start_process(extra_args=("--permanent-rate", "1"))
    try:
        request = urllib.request.Request(
            f"{process.url}/payouts", method="POST",
            data=json.dumps({"payout_id": "p", "loan_id": "L", "customer_id": "C",
                             "amount_cents": 1, "currency": "EUR"}).encode(),
            headers={"Idempotency-Key": "p", "Content-Type": "application/json"},
        )  # fmt: skip
        with pytest.raises(urllib.error.HTTPError) as rejected:
            urllib.request.urlopen(request, timeout=5)
        assert rejected.value.code == 422
    finally:
        process.stop()
    host, port = process.url.removeprefix("http://").split(":")
    with pytest.raises(OSError):
        socket.create_connection((host, int(port)), timeout=1).close()
