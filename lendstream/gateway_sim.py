"""The payout gateway simulator: a real HTTP server for `lendstream dev`, the tests and
docker-compose (`lendstream gateway-sim`).

`POST /payouts` takes the contract's JSON body and `Idempotency-Key` header. An accepted payout
answers 201 and is recorded; a key already accepted answers 409 (the client counts it as sent).
`GET /payouts` lists every payout id with how often it was accepted (more than once would be a
double payment: a different key for the same payout) and requested, so tests can assert that no
payout was paid twice. A body without the header or with missing fields answers 400.

Failures can be injected, before the idempotency check (so a retry of an accepted payout may
fail too, as at a real gateway):
- per run: `transient_rate` and `permanent_rate` (probabilities per request, drawn from a
  seeded random generator); a transient failure is one of `transient_modes`;
- per loan: a mode, or a list of modes used one per request, then normal service.
Modes: `ok`, `error` (503), `timeout` (hang `hang_seconds`, then 503), `refuse` (close the
connection without answering), `reject` (422).
Set them at start (CLI flags / `SimulatorConfig`) or at run time with `POST /control` (a JSON
object with any `SimulatorConfig` field; `loans` entries are merged) and `POST /reset`.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from aiohttp import web

from lendstream.embedded import free_port, stop_process, wait_for_port
from lendstream.gateway import IDEMPOTENCY_HEADER, PAYOUTS_PATH

Mode = Literal["ok", "error", "timeout", "refuse", "reject"]
MODES: tuple[str, ...] = ("ok", "error", "timeout", "refuse", "reject")
TRANSIENT_MODES: tuple[str, ...] = ("error", "timeout", "refuse")
REQUIRED_FIELDS = ("payout_id", "loan_id", "customer_id", "amount_cents", "currency")


@dataclass
class SimulatorConfig:
    transient_rate: float = 0.0
    permanent_rate: float = 0.0
    seed: int = 1
    transient_modes: list[str] = field(default_factory=lambda: list(TRANSIENT_MODES))
    hang_seconds: float = 30.0
    loans: dict[str, str | list[str]] = field(default_factory=dict)

    def validate(self) -> None:
        """Raise `ValueError` naming the first bad field."""
        for name in ("transient_rate", "permanent_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {value}")
        if self.transient_rate + self.permanent_rate > 1.0:
            raise ValueError("transient_rate + permanent_rate must not exceed 1")
        if self.hang_seconds < 0:
            raise ValueError(f"hang_seconds must not be negative, got {self.hang_seconds}")
        bad = [m for m in self.transient_modes if m not in TRANSIENT_MODES]
        for plan in self.loans.values():
            bad += [m for m in ([plan] if isinstance(plan, str) else plan) if m not in MODES]
        if bad:
            raise ValueError(f"unknown mode {bad[0]!r} (one of {', '.join(MODES)})")


@dataclass
class Record:
    accepted: int = 0  # 201 answers for this payout id (more than 1: paid twice)
    requests: int = 0


class GatewaySimulator:
    """The simulator's state and request handling (one per server)."""

    def __init__(self, config: SimulatorConfig | None = None) -> None:
        self.config = config or SimulatorConfig()
        self.config.validate()
        self.random = random.Random(self.config.seed)
        self.keys: set[str] = set()
        self.payouts: dict[str, Record] = {}
        self._initial = asdict(self.config)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post(PAYOUTS_PATH, self.pay)
        app.router.add_get(PAYOUTS_PATH, self.list_payouts)
        app.router.add_post("/control", self.control)
        app.router.add_post("/reset", self.reset)
        app.router.add_get("/health", self.health)
        return app

    def mode_for(self, loan_id: str) -> str:
        """This request's mode: the loan's plan first, else the run's failure rates."""
        plan = self.config.loans.get(loan_id)
        if isinstance(plan, list):
            if plan:
                return plan.pop(0)
        elif plan is not None:
            return plan
        draw = self.random.random()
        if draw < self.config.permanent_rate:
            return "reject"
        if draw < self.config.permanent_rate + self.config.transient_rate:
            return self.random.choice(self.config.transient_modes)
        return "ok"

    async def pay(self, request: web.Request) -> web.StreamResponse:
        key = request.headers.get(IDEMPOTENCY_HEADER)
        body = await _json_object(request)
        missing = [f for f in REQUIRED_FIELDS if body is None or f not in body]
        if not key or missing:
            reason = f"missing {IDEMPOTENCY_HEADER}" if not key else f"missing {missing}"
            return web.json_response({"error": reason}, status=400)
        assert body is not None
        record = self.payouts.setdefault(str(body["payout_id"]), Record())
        record.requests += 1
        mode = self.mode_for(str(body["loan_id"]))
        if mode == "refuse":
            assert request.transport is not None
            request.transport.close()
            raise asyncio.CancelledError  # nothing is answered on a closed connection
        if mode == "timeout":
            await asyncio.sleep(self.config.hang_seconds)
        if mode in ("error", "timeout"):
            return web.json_response({"error": f"simulated {mode}"}, status=503)
        if mode == "reject":
            return web.json_response({"error": "simulated rejection"}, status=422)
        if key in self.keys:
            return web.json_response(
                {"payout_id": body["payout_id"], "duplicate": True}, status=409
            )
        self.keys.add(key)
        record.accepted += 1
        return web.json_response({"payout_id": body["payout_id"]}, status=201)

    async def list_payouts(self, request: web.Request) -> web.Response:
        payouts = {pid: asdict(record) for pid, record in self.payouts.items() if record.accepted}
        requested = {pid: asdict(record) for pid, record in self.payouts.items()}
        return web.json_response({"payouts": payouts, "requested": requested})

    async def control(self, request: web.Request) -> web.Response:
        body = await _json_object(request)
        known = {f.name for f in fields(SimulatorConfig)}
        if body is None or set(body) - known:
            unknown = sorted(set(body or {}) - known) or "not a JSON object"
            return web.json_response({"error": f"unknown fields: {unknown}"}, status=400)
        merged = {
            **asdict(self.config),
            **body,
            "loans": {**self.config.loans, **body.get("loans", {})},
        }
        try:
            config = SimulatorConfig(**merged)
            config.validate()
        except (TypeError, ValueError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        if config.seed != self.config.seed:
            self.random = random.Random(config.seed)
        self.config = config
        return web.json_response(asdict(config))

    async def reset(self, request: web.Request) -> web.Response:
        """Forget every payout and go back to the configuration the server started with."""
        self.config = SimulatorConfig(**self._initial)
        self.random = random.Random(self.config.seed)
        self.keys.clear()
        self.payouts.clear()
        return web.json_response({"reset": True})

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True})


async def _json_object(request: web.Request) -> dict[str, Any] | None:
    try:
        body = await request.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


# -- running it ------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def serving(
    simulator: GatewaySimulator, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[str]:
    """Serve `simulator` in this event loop; yields its base URL (port 0: a free one)."""
    runner = web.AppRunner(simulator.app(), handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1]
    try:
        yield f"http://{host}:{bound}"
    finally:
        await runner.cleanup()


def run(host: str, port: int, config: SimulatorConfig) -> None:
    """Serve until interrupted or terminated (the `lendstream gateway-sim` command)."""
    web.run_app(GatewaySimulator(config).app(), host=host, port=port, print=None, access_log=None)


@dataclass(frozen=True)
class SimulatorProcess:
    pid: int
    url: str

    def stop(self) -> None:
        stop_process(self.pid)


def start_process(
    host: str = "127.0.0.1", extra_args: tuple[str, ...] = (), timeout: float = 20.0
) -> SimulatorProcess:
    """`lendstream gateway-sim` as a child process on a free port; stop it with `.stop()`."""
    port = free_port(host)
    command = [sys.executable, "-m", "lendstream", "gateway-sim", "--host", host,
               "--port", str(port), *extra_args]  # fmt: skip
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(host, port, timeout, proc)
    except BaseException:
        stop_process(proc.pid)
        raise
    return SimulatorProcess(proc.pid, f"http://{host}:{port}")
