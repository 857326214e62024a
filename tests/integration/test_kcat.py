"""The kcat recipe of docs/producing.md against the real broker: with
`-X topic.partitioner=murmur2_random` every key lands where lendstream's producers put it (and
without it, not), and the values are events the codec reads.

Installs what it needs when missing (CI runs as root): Debian's `kcat`, and — because Debian's
librdkafka 2.0 fails at ApiVersion on the embedded broker (TANSU.md) — the newer librdkafka
inside the `confluent-kafka` wheel, used through LD_LIBRARY_PATH as the doc describes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import orjson
import pytest

from lendstream.admin import ensure_topics
from lendstream.embedded import Broker
from lendstream.settings import Settings
from lendstream.topics import LOAN_EVENTS, Event
from tests.harness import partition_of, read_topics

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

DOC = Path(__file__).resolve().parents[2] / "docs" / "producing.md"
RECIPE_FLAGS = ["-K", "|", "-X", "topic.partitioner=murmur2_random", "-X", "acks=all"]
CONFLUENT_KAFKA = "confluent-kafka==2.16.1"


def ensure_debian_package(binary: str, package: str) -> str:
    found = shutil.which(binary)
    if found:
        return found
    if os.geteuid() != 0:
        pytest.fail(f"{binary} is missing: apt-get install {package}")
    subprocess.run(["apt-get", "update", "-q"], capture_output=True, timeout=300)
    for _ in range(10):  # another process may hold the dpkg lock
        done = subprocess.run(
            ["apt-get", "install", "-y", "-q", package], capture_output=True, text=True, timeout=300
        )
        if done.returncode == 0 and shutil.which(binary):
            return shutil.which(binary) or binary
        time.sleep(5)
    pytest.fail(f"apt-get install {package} failed:\n{done.stderr[-2000:]}")


@pytest.fixture(scope="session")
def kcat_env(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, str]]:
    """(kcat binary, environment with a current librdkafka on LD_LIBRARY_PATH)."""
    kcat = ensure_debian_package("kcat", "kcat")
    wheels = tmp_path_factory.mktemp("confluent-kafka")
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
         "-d", str(wheels), CONFLUENT_KAFKA],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (wheel,) = wheels.glob("confluent_kafka-*.whl")
    lib = wheels / "lib"
    lib.mkdir()
    with zipfile.ZipFile(wheel) as archive:
        (member,) = [n for n in archive.namelist() if Path(n).name.startswith("librdkafka-")]
        (lib / "librdkafka.so.1").write_bytes(archive.read(member))
    return kcat, {**os.environ, "LD_LIBRARY_PATH": str(lib)}


def kcat_produce(
    kcat: str, env: dict[str, str], broker: Broker, lines: list[str], flags: list[str]
) -> None:
    done = subprocess.run(
        [kcat, "-P", "-b", broker.bootstrap, "-t", "loan-events", *flags],
        input="".join(f"{line}\n" for line in lines).encode(), env=env,
        capture_output=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()[-2000:]


def lines_for(prefix: str, count: int) -> list[str]:
    out = []
    for n in range(count):
        loan = f"{prefix}-{n}"
        event = {"event_id": f"{loan}-x", "type": "LoanRejected",
                 "occurred_at": "2026-01-31T12:00:00Z", "loan_id": loan,
                 "data": {"reason": "affordability"}}  # fmt: skip
        out.append(f"{loan}|{orjson.dumps(event).decode()}")
    return out


def test_the_doc_names_the_recipe_flags() -> None:
    doc = DOC.read_text(encoding="utf-8")
    assert "-K '|'" in doc and "-X topic.partitioner=murmur2_random" in doc


async def test_the_kcat_recipe_partitions_like_lendstream(
    broker: Broker, kcat_env: tuple[str, dict[str, str]]
) -> None:
    kcat, env = kcat_env
    await ensure_topics(Settings(kafka=broker.url, partitions=8, _env_file=None))  # type: ignore[call-arg]
    kcat_produce(kcat, env, broker, lines_for("L-recipe", 40), RECIPE_FLAGS)
    kcat_produce(kcat, env, broker, lines_for("L-default", 40), ["-K", "|"])

    records = await read_topics([broker.bootstrap], ["loan-events"], 8)
    assert len(records) == 80
    for record in records:
        assert isinstance(LOAN_EVENTS.decode(record.key, record.value), Event)
    recipe = [r for r in records if r.key.startswith(b"L-recipe")]
    default = [r for r in records if r.key.startswith(b"L-default")]
    assert all(r.partition == partition_of(r.key, 8) for r in recipe)
    assert any(r.partition != partition_of(r.key, 8) for r in default)
