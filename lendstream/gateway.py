"""The payout gateway client (contract §5.2).

`GatewayClient.pay(call)` makes one `POST {base_url}/payouts` with the JSON body
`{payout_id, loan_id, customer_id, amount_cents, currency}` and `Idempotency-Key: <payout_id>`,
and says what it came to as a `sagas.payout.GatewayResult`:

- `sent`: 2xx or 409 (the gateway already has this payout);
- `permanent(reason)`: any other 4xx;
- `transient(reason)`: 5xx, a connect or read timeout, a refused or dropped connection, or any
  other transport failure.

It never raises for an HTTP-level or transport outcome; retrying is the saga's business.
One client holds one aiohttp session (connection pooling); close it with `close()` or use it
as an async context manager.
"""

from __future__ import annotations

from types import TracebackType

import aiohttp

from lendstream.sagas.payout import CallGateway, GatewayResult, classify_status
from lendstream.settings import Settings

PAYOUTS_PATH = "/payouts"
IDEMPOTENCY_HEADER = "Idempotency-Key"


class GatewayClient:
    """One gateway endpoint. `connect_timeout` bounds opening a connection, `read_timeout`
    waiting for the answer (seconds)."""

    def __init__(
        self, base_url: str, connect_timeout: float = 2.0, read_timeout: float = 10.0
    ) -> None:
        self.url = base_url.rstrip("/") + PAYOUTS_PATH
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout, sock_read=read_timeout
        )
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> GatewayClient:
        """The client of `LENDSTREAM_GATEWAY_URL` (required) with the configured timeouts."""
        settings.require("gateway_url")
        assert settings.gateway_url is not None
        return cls(
            settings.gateway_url, settings.gateway_connect_timeout, settings.gateway_read_timeout
        )

    async def pay(self, call: CallGateway) -> GatewayResult:
        """One attempt at `call`; never raises for what the gateway or the network did."""
        body = {
            "payout_id": call.payout_id,
            "loan_id": call.loan_id,
            "customer_id": call.customer_id,
            "amount_cents": call.amount_cents,
            "currency": call.currency,
        }
        headers = {IDEMPOTENCY_HEADER: call.payout_id}
        try:
            async with self._client().post(self.url, json=body, headers=headers) as response:
                await response.read()
                return classify_status(response.status)
        except TimeoutError:
            return GatewayResult("transient", "gateway timed out")
        except aiohttp.ClientConnectorError as exc:
            return GatewayResult("transient", f"cannot connect to the gateway: {exc.os_error}")
        except aiohttp.ServerDisconnectedError:
            return GatewayResult("transient", "gateway closed the connection")
        except aiohttp.ClientError as exc:
            return GatewayResult("transient", f"gateway transport error: {exc!r}")

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> GatewayClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
