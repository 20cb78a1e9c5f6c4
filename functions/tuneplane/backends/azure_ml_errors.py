"""How an Azure call's failure becomes one of the backend errors in ``tuneplane.ports``.

| failure                                                     | becomes                | the job          |
|-------------------------------------------------------------|------------------------|------------------|
| 408/429/5xx, connection reset, timeout (after retries)      | BackendUnavailable     | unchanged, retried next pass |
| quota or capacity refusal (QuotaExceeded, 'quota', …)        | CapacityUnavailable    | stays queued, with an event |
| credential refused (401/403, ClientAuthenticationError)     | BackendMisconfigured   | unchanged; the API answers 503 |
| workspace not found                                         | BackendMisconfigured   | unchanged; the API answers 503 |
| any other 4xx, or the SDK's own validation error            | PermanentBackendError  | failed, with the code |

Transient failures retry with exponential backoff and full jitter inside a bounded time budget, so
one reconciler pass never hangs on a sick service.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable
from typing import Any, TypeVar

from tuneplane.ports import (
    BackendError,
    BackendMisconfigured,
    BackendUnavailable,
    CapacityUnavailable,
    PermanentBackendError,
)

T = TypeVar("T")

TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_CAPACITY = re.compile(
    r"quota|capacity|insufficient.*(cores|resources)|allocationfailed|skunotavailable|notavailableforsubscription",
    re.IGNORECASE,
)
_WORKSPACE_MISSING = re.compile(r"workspace.*(not found|could not be found|does not exist)", re.IGNORECASE)


def _status(error: BaseException) -> int | None:
    status = getattr(error, "status_code", None)
    if status is None and getattr(error, "response", None) is not None:
        status = getattr(error.response, "status_code", None)
    return status


def _code(error: BaseException) -> str:
    code = getattr(error, "error_code", None)
    inner = getattr(error, "error", None)
    if not code and inner is not None:
        code = getattr(inner, "code", None)
    return str(code or "")


def is_transient(error: BaseException) -> bool:
    from azure.core.exceptions import ServiceRequestError, ServiceResponseError

    if isinstance(error, (ServiceRequestError, ServiceResponseError, TimeoutError, ConnectionError)):
        return True
    try:
        import httpx

        if isinstance(error, httpx.TransportError):  # the scoring call: connect/read timeouts, resets
            return True
    except ImportError:  # pragma: no cover - httpx is a pinned dependency of the control plane
        pass
    status = _status(error)
    return status in TRANSIENT_STATUS and not _CAPACITY.search(f"{_code(error)} {error}")


def classify(error: BaseException, what: str, *, permanent_code: str = "azure_ml_rejected") -> BackendError:
    """The backend error for an Azure failure that retrying will not (or did not) fix."""
    from azure.core.exceptions import ClientAuthenticationError

    if isinstance(error, BackendError):
        return error
    text = f"{_code(error)} {error}".strip()
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    status = _status(error)
    if isinstance(error, ClientAuthenticationError) or status in (401, 403):
        return BackendMisconfigured(
            "TUNEPLANE_AZURE_CLIENT_ID",
            f"Azure refused the control plane's credential while trying to {what}: {first_line} "
            "(check the managed identity, TUNEPLANE_AZURE_CLIENT_ID, and its role on the workspace).",
        )
    if status == 404 and _WORKSPACE_MISSING.search(text):
        return BackendMisconfigured(
            "TUNEPLANE_AZURE_WORKSPACE", f"The Azure ML workspace was not found while trying to {what}: {first_line}"
        )
    if _CAPACITY.search(text):
        return CapacityUnavailable("capacity_unavailable", f"Azure has no capacity or quota to {what}: {first_line}")
    if is_transient(error):
        return BackendUnavailable("azure_unavailable", f"Azure did not answer while trying to {what}: {first_line}")
    return PermanentBackendError(permanent_code, f"Azure ML refused to {what}: {first_line}")


class Retry:
    """Run an Azure call, retrying transient failures within ``budget_s`` seconds."""

    def __init__(
        self,
        budget_s: float = 30.0,
        *,
        base_delay_s: float = 0.5,
        max_delay_s: float = 8.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.budget_s = budget_s
        self.base_delay_s = base_delay_s
        self.max_delay_s = max_delay_s
        self._sleep = sleep
        self._clock = clock
        self._rng = rng or random.Random()
        self.attempts = 0  # of the last call, for tests and logs

    def call(self, what: str, fn: Callable[..., T], *args: Any, permanent_code: str = "azure_ml_rejected", **kwargs: Any) -> T:
        deadline = self._clock() + self.budget_s
        self.attempts = 0
        while True:
            self.attempts += 1
            try:
                return fn(*args, **kwargs)
            except BackendError:
                raise
            except Exception as error:  # noqa: BLE001 - every failure is classified below
                if not is_transient(error):
                    raise classify(error, what, permanent_code=permanent_code) from error
                cap = min(self.max_delay_s, self.base_delay_s * 2 ** (self.attempts - 1))
                delay = self._rng.uniform(0, cap)
                if self._clock() + delay > deadline:
                    raise classify(error, what, permanent_code=permanent_code) from error
                self._sleep(delay)
