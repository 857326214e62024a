"""A real Prometheus server (Debian's `prometheus` package) for tests: free port, its own data
dir (removed afterwards), stopped by its pid."""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import yaml

from lendstream.embedded import free_port, stop_process, wait_for_port
from tests.deploy.tools import apt_tool
from tests.scrape import http_get


@dataclass
class PrometheusServer:
    proc: subprocess.Popen[bytes]
    port: int
    root: Path

    def api(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        status, body = http_get(f"http://127.0.0.1:{self.port}/api/v1/{path}{query}")
        assert status == 200, body[:500]
        return orjson.loads(body)["data"]

    def alert_states(self, name: str) -> list[tuple[dict[str, str], str]]:
        """(labels, state) of the active (pending or firing) alerts called `name`."""
        return [(a["labels"], a["state"]) for a in self.api("alerts")["alerts"]
                if a["labels"]["alertname"] == name]  # fmt: skip

    def query(self, expr: str) -> list[dict[str, Any]]:
        return self.api("query", query=expr)["result"]  # type: ignore[no-any-return]

    def stop(self) -> None:
        if self.proc.poll() is None:
            stop_process(self.proc.pid)
        self.proc.wait(timeout=30)
        shutil.rmtree(self.root, ignore_errors=True)


def start_prometheus(root: Path, targets: list[str], rules: Path,
                     interval: str = "1s") -> PrometheusServer:  # fmt: skip
    """Scrape `targets` as job "lendstream" every `interval` and evaluate `rules` as often."""
    binary = apt_tool("prometheus", "prometheus")
    root.mkdir(parents=True)
    config = {
        "global": {"scrape_interval": interval, "scrape_timeout": interval,
                   "evaluation_interval": interval},
        "rule_files": [str(rules)],
        "scrape_configs": [{"job_name": "lendstream", "static_configs": [{"targets": targets}]}],
    }  # fmt: skip
    (root / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    with open(root / "prometheus.log", "ab") as out:
        proc = subprocess.Popen(
            [binary, f"--config.file={root / 'prometheus.yml'}",
             f"--storage.tsdb.path={root / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
             "--log.level=warn"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    server = PrometheusServer(proc, port, root)
    try:
        wait_for_port("127.0.0.1", port, 60, proc)
        deadline = time.monotonic() + 60
        while http_get(f"http://127.0.0.1:{port}/-/ready")[0] != 200:
            assert time.monotonic() < deadline, "Prometheus not ready after 60s"
            time.sleep(0.2)
    except BaseException:
        server.stop()
        raise
    return server
