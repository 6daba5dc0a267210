"""What the routes depend on: the service's parts, and the bearer token check."""

from __future__ import annotations

import base64
import binascii
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from services.db import Database
from services.orchestrator import Orchestrator
from services.predict import MemoryBudget, ModelCache
from services.ray_jobs import JobBackend
from services.settings import Settings


@dataclass
class Service:
    """The parts of a running service, kept on ``app.state.service``."""

    settings: Settings
    db: Database
    backend: JobBackend
    orchestrator: Orchestrator
    models: ModelCache = field(default_factory=ModelCache)
    # Bounds the predictions running at once (settings.predict_concurrency) and those waiting.
    predict_slots: threading.BoundedSemaphore = field(init=False)
    predict_waiting: threading.BoundedSemaphore = field(init=False)
    # The memory the predictions running at once share (settings.predict_memory_bytes).
    predict_budget: MemoryBudget = field(init=False)
    # Set once the service answers runs (health says "starting" until then).
    ready: threading.Event = field(default_factory=threading.Event)
    # Whether the cluster answers, for the health check (set by create_app).
    cluster_probe: Callable[[], str] = field(default=lambda: "ok")
    # Whether this service runs the reconciler (tests that step it by hand do not).
    orchestrating: bool = True

    def __post_init__(self) -> None:
        self.predict_slots = threading.BoundedSemaphore(self.settings.predict_concurrency)
        self.predict_waiting = threading.BoundedSemaphore(self.settings.predict_queue)
        self.predict_budget = MemoryBudget(self.settings.predict_memory_bytes)


def get_service(request: Request) -> Service:
    return request.app.state.service


ServiceDep = Annotated[Service, Depends(get_service)]

# auto_error=False: a missing header is our 401 (with the scheme named), not FastAPI's default.
_bearer = HTTPBearer(auto_error=False, description="SELFTRAIN_API_TOKEN")


def require_token(
    service: ServiceDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """401 unless the request carries ``Authorization: Bearer <SELFTRAIN_API_TOKEN>``."""
    expected = service.settings.api_token.get_secret_value().encode()
    given = (credentials.credentials if credentials is not None else "").encode()
    if credentials is None or not secrets.compare_digest(given, expected):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing or wrong bearer token",
            headers={"WWW-Authenticate": "Bearer"},
        )


def require_token_or_basic(service: ServiceDep, request: Request) -> None:
    """401 unless the request carries the bearer token, or HTTP basic auth whose password is the
    token (how Label Studio authenticates to an ML backend; the user name is not checked)."""
    expected = service.settings.api_token.get_secret_value().encode()
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    given = b""
    if scheme.lower() == "bearer":
        given = value.strip().encode()
    elif scheme.lower() == "basic":
        try:
            given = base64.b64decode(value.strip(), validate=True).partition(b":")[2]
        except (binascii.Error, ValueError):
            given = b""
    if not given or not secrets.compare_digest(given, expected):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing or wrong token (bearer, or basic auth with the token as password)",
            headers={"WWW-Authenticate": 'Basic realm="selftrain"'},
        )
