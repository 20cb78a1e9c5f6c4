"""Feeds that play Event Grid's part where there is no Event Grid: they notice new training data and
hand it to the same ``RetrainingHandler.blob_created`` as the Azure trigger.

* ``InboxFeed``: the folder ``${TUNEPLANE_HOME}/inbox/<container>/<path>/…`` (the local default).
  A file is picked up only once it is *quiescent*: the same size and modification time in two
  scans, and not modified for ``quiet_seconds``. Names that editors and copy tools use while
  writing (``.name``, ``*.tmp``, ``*.part``, ``*~``) are never looked at, and only ``*.jsonl``
  counts, as in the Event Grid subscription's filter. So a half-written file is not read.
* ``ContainerFeed``: the blob containers of the policies, listed through the Blob API (Azurite in
  development, when ``TUNEPLANE_BACKEND=azure``). A block blob becomes visible only when its upload
  commits, so a listed blob is always whole.

Each blob version is announced with an etag (size and mtime for files, the blob's ETag otherwise),
so the handler's ledger makes a rescan, or a restart, start nothing twice.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tuneplane.ports import NotFound
from tuneplane.retraining import BlobCreated, RetrainingHandler

log = logging.getLogger("tuneplane.inbox")

IGNORED_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".swp", "~")
TRAINING_SUFFIX = ".jsonl"


def wanted(name: str) -> bool:
    return not name.startswith(".") and not name.endswith(IGNORED_SUFFIXES) and name.endswith(TRAINING_SUFFIX)


class InboxSource:
    """BlobSource over the inbox folder: container = first folder level, path = the rest."""

    def __init__(self, root: Path | str):
        self.root = Path(root)

    def file(self, container: str, path: str) -> Path:
        target = (self.root / container / path).resolve()
        if not target.is_relative_to(self.root.resolve()) or not target.is_file():
            raise NotFound(f"{container}/{path} is not a file in the inbox")
        return target

    def open_read(self, container: str, path: str, chunk_size: int = 1 << 16) -> Iterator[bytes]:
        with open(self.file(container, path), "rb") as handle:
            while chunk := handle.read(chunk_size):
                yield chunk


class InboxFeed:
    def __init__(self, root: Path | str, handler: RetrainingHandler, *, quiet_seconds: float = 1.0,
                 clock: Callable[[], float] = time.time):
        self.root = Path(root)
        self.handler = handler
        self.quiet_seconds = quiet_seconds
        self.clock = clock
        self._seen: dict[str, tuple[int, int]] = {}  # path -> (size, mtime_ns) at the previous scan
        self._done: dict[str, tuple[int, int]] = {}  # path -> the version already handed over

    def scan_once(self) -> list[BlobCreated]:
        """One look at the inbox; returns the blobs handed to the handler."""
        handed: list[BlobCreated] = []
        current: dict[str, tuple[int, int]] = {}
        for path in self._files():
            try:
                stat = path.stat()
            except FileNotFoundError:  # removed between listing and looking
                continue
            relative = path.relative_to(self.root).as_posix()
            version = (stat.st_size, stat.st_mtime_ns)
            current[relative] = version
            quiet = self.clock() - stat.st_mtime_ns / 1e9 >= self.quiet_seconds
            if self._done.get(relative) == version or self._seen.get(relative) != version or not quiet:
                continue
            container, _, blob_path = relative.partition("/")
            etag = f"{stat.st_mtime_ns:x}-{stat.st_size:x}"
            blob = BlobCreated(event_id=f"inbox:{relative}:{etag}", container=container, path=blob_path, etag=etag)
            self.handler.blob_created(blob)
            self._done[relative] = version
            handed.append(blob)
        self._seen = current
        return handed

    def _files(self) -> Iterator[Path]:
        if not self.root.is_dir():
            return
        for container in sorted(self.root.iterdir()):
            if not container.is_dir() or container.name.startswith("."):
                continue
            for folder, dirs, names in os.walk(container):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(names):
                    if wanted(name) and os.path.isfile(os.path.join(folder, name)):
                        yield Path(folder) / name


class ContainerSource:
    """BlobSource over a BlobServiceClient (Azure Blob Storage or Azurite)."""

    def __init__(self, service: Any):
        self.service = service

    def open_read(self, container: str, path: str) -> Iterator[bytes]:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            downloader = self.service.get_blob_client(container, path).download_blob()
        except ResourceNotFoundError as error:
            raise NotFound(f"{container}/{path}") from error
        yield from downloader.chunks()


class ContainerFeed:
    def __init__(self, service: Any, handler: RetrainingHandler, prefixes: Callable[[], set[tuple[str, str]]]):
        self.service = service
        self.handler = handler
        self.prefixes = prefixes  # (container, folder) pairs that some policy watches, asked on every scan
        self._done: set[tuple[str, str, str]] = set()

    def scan_once(self) -> list[BlobCreated]:
        from azure.core.exceptions import ResourceNotFoundError

        handed = []
        for container, folder in sorted(self.prefixes()):
            try:
                blobs = list(self.service.get_container_client(container).list_blobs(name_starts_with=folder or None))
            except ResourceNotFoundError:
                continue
            for item in blobs:
                etag = str(item.etag).strip('"')
                if (container, item.name, etag) in self._done or not wanted(item.name.rsplit("/", 1)[-1]):
                    continue
                blob = BlobCreated(event_id=f"feed:{container}/{item.name}:{etag}", container=container,
                                   path=item.name, etag=etag)
                self.handler.blob_created(blob)
                self._done.add((container, item.name, etag))
                handed.append(blob)
        return handed


class FeedThread:
    """Runs a feed's ``scan_once`` every ``interval`` seconds until stopped."""

    def __init__(self, feed: Any, interval: float):
        self.feed = feed
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="tuneplane-inbox", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.feed.scan_once()
            except Exception:  # a bad file or a locked database must not end the watching
                log.exception("inbox scan failed")
            self._stop.wait(self.interval)


def blob_source(settings: Any) -> Any:
    """Where the handler reads triggering blobs for this backend."""
    if settings.backend == "azure":
        from tuneplane.backends.azure_config import AzureSettings

        return ContainerSource(AzureSettings().storage_account().blob_service())
    return InboxSource(settings.home / "inbox")


def build_feed(settings: Any, handler: RetrainingHandler, policies: Any) -> FeedThread | None:
    """The inbox watcher locally; the container feed when the Azure stores run on Azurite (a
    connection string is set). In Azure itself Event Grid delivers, so no feed runs there."""
    if settings.inbox_scan_seconds <= 0:
        return None
    if settings.backend == "azure":
        from tuneplane.backends.azure_config import AzureSettings

        azure = AzureSettings()
        if not azure.storage_connection_string:
            return None
        feed: Any = ContainerFeed(azure.storage_account().blob_service(), handler,
                                  lambda: {(p.blob_prefix.container, p.blob_prefix.path) for p in policies.all_policies()})
    else:
        feed = InboxFeed(settings.home / "inbox", handler, quiet_seconds=settings.inbox_quiet_seconds)
    return FeedThread(feed, settings.inbox_scan_seconds)
