"""Azurite, the real Azure Storage emulator, for tests of the Azure storage adapters.

One Azurite process serves the whole pytest session: starting Node costs about a second, and the
stores isolate themselves by table prefix / container name, so tests never see each other's data.
Use the ``azurite`` fixture (import it into a test module or conftest):

    from tests.azurite import azurite  # noqa: F401

The process listens on free loopback ports, keeps everything in memory, and is stopped at the end
of the session (and, as a backstop, at interpreter exit).
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
AZURITE_BIN = ROOT / "node_modules" / ".bin" / "azurite"

# The well-known development account every Azurite instance accepts (documented by Microsoft).
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


@dataclass
class AzuriteInstance:
    process: subprocess.Popen
    blob_port: int
    table_port: int
    workdir: str

    @property
    def blob_url(self) -> str:
        return f"http://127.0.0.1:{self.blob_port}/{ACCOUNT}"

    @property
    def table_url(self) -> str:
        return f"http://127.0.0.1:{self.table_port}/{ACCOUNT}"

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
            f"BlobEndpoint={self.blob_url};TableEndpoint={self.table_url};"
        )

    def unique_name(self, prefix: str = "t") -> str:
        """A fresh table prefix / container name (lowercase letters and digits)."""
        return prefix + uuid.uuid4().hex[:12]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        shutil.rmtree(self.workdir, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def start_azurite(timeout: float = 60.0) -> AzuriteInstance:
    if not AZURITE_BIN.exists():
        raise RuntimeError(f"Azurite is not installed at {AZURITE_BIN}; run `npm ci` (scripts/test does)")
    last_error = ""
    # A free port can be taken between probing and binding; try a few fresh sets.
    for _ in range(3):
        blob, queue, table = _free_port(), _free_port(), _free_port()
        workdir = tempfile.mkdtemp(prefix="azurite-")
        log = open(os.path.join(workdir, "azurite.log"), "wb")
        process = subprocess.Popen(
            [
                str(AZURITE_BIN),
                "--blobHost", "127.0.0.1", "--blobPort", str(blob),
                "--queueHost", "127.0.0.1", "--queuePort", str(queue),
                "--tableHost", "127.0.0.1", "--tablePort", str(table),
                "--inMemoryPersistence", "--skipApiVersionCheck", "--disableTelemetry", "--silent",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=workdir,
        )
        log.close()
        instance = AzuriteInstance(process, blob, table, workdir)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and process.poll() is None:
            if _listening(blob) and _listening(table):
                return instance
            time.sleep(0.2)
        last_error = Path(workdir, "azurite.log").read_text(errors="replace")[-2000:]
        instance.stop()
    raise RuntimeError(f"Azurite did not start: {last_error}")


_lock = threading.Lock()
_instance: AzuriteInstance | None = None


def shared_azurite() -> AzuriteInstance:
    """The session's Azurite, started on first use."""
    global _instance
    with _lock:
        if _instance is None or _instance.process.poll() is not None:
            _instance = start_azurite()
            atexit.register(_instance.stop)
        return _instance


def stop_shared_azurite() -> None:
    global _instance
    with _lock:
        if _instance is not None:
            _instance.stop()
            _instance = None


@pytest.fixture(scope="session")
def azurite():
    # Several modules import this fixture; the singleton keeps it to one process per session.
    instance = shared_azurite()
    yield instance
    stop_shared_azurite()
