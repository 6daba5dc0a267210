"""Service settings, read from the environment with the prefix ``SELFTRAIN_``.

``SELFTRAIN_API_TOKEN`` has no default: a control plane that starts Ray jobs on request must not
come up open by accident (``selftrain serve`` makes up a random one and prints it when it is unset).
Without ``SELFTRAIN_RAY_ADDRESS``, ``selftrain serve`` starts a Ray head of its own on this machine.
Lists such as ``SELFTRAIN_DATA_ROOTS`` are JSON (``'["/data"]'``).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_DIR = Path(__file__).resolve().parents[1]


class Settings(BaseSettings):
    """Everything the service reads from its environment.

    Attributes:
        api_token: The bearer token every ``/api`` route except health requires.
        ray_address: The Ray dashboard (job server) address the jobs are submitted to, e.g.
            ``http://head:8265``; None: ``selftrain serve`` starts a local Ray head and uses it.
        local_ray_cpus: CPUs of that local head; default: all of this machine's.
        database_url: SQLAlchemy URL; defaults to a SQLite file in ``workdir``.
        data_roots: Folders that dataset, checkpoint, store and output paths must lie in.
        workdir: Where the service writes stage configs and, unless a spec names an output, outputs.
            The Ray cluster must see it at the same path (a shared volume).
        repo_dir: The repository shipped to Ray as the jobs' working directory.
        job_python: The interpreter named in the jobs' entry points.
        poll_interval_s: How often the orchestrator polls Ray and the SSE streams poll the database.
        cluster_lost_after_s: A run whose cluster stays unreachable this long ends FAILED with
            the reason (until then its stage says it is waiting, and why).
        cluster_timeout_s: A call to the cluster's job API that has not answered in this long
            counts as the cluster being unreachable (Ray's client waits forever).
        reconcile_deadline_s: A pass over one run (asking the cluster, reading its files) that
            takes longer is marked stalled with what it was doing; other runs go on.
        reconcile_parallel: Passes over runs running at once (stalled ones not counted).
        max_upload_bytes: Largest image accepted by ``/api/predict`` (larger: 413).
        max_image_pixels: Largest decoded image (height x width) to predict on (larger: 413).
        max_json_bytes: Largest JSON request body (a run spec).
        predict_max_side: The longest side of a model input; a longer image is read scaled down
            (the response says so: ``X-Model-Input``).
        predict_max_input_pixels: The most pixels of a model input (bounds the time of one
            prediction); a larger image is read scaled down.
        predict_request_bytes: The most memory one prediction may hold by its estimate
            (core.image_cost: decoded image, model input, activations, logits, label, overlay);
            the model input is scaled down to fit, and an image whose full-size buffers alone
            are over is a 413.
        predict_memory_bytes: The memory all predictions running at once share: each reserves
            its estimate and waits (up to ``predict_wait_s``) until it fits.
        predict_device: Torch device for prediction.
        predict_concurrency: Predictions running at once (each holds a decoded image and the
            model's activations); more requests wait for a slot.
        predict_wait_s: How long a request waits for a slot before a 503.
        predict_queue: Requests that may wait for a slot at once; one more gets a 503 at once.
        tracking_uri: MLflow's tracking URI for the runs (a server the jobs reach, e.g.
            ``http://mlflow:5000``); default: ``sqlite:///<workdir>/mlflow.db`` when MLflow is
            installed; ``off``: no tracking.
        tracking_ui: The MLflow UI's address for the dashboard's links; default: the tracking URI
            when it is an HTTP server (none for the SQLite default: ``mlflow ui
            --backend-store-uri sqlite:///<workdir>/mlflow.db`` serves it, then set this).
        label_studio_url: The Label Studio whose uploaded images the ML backend may download
            (services/routes_label_studio.py); None: only its local files are read.
        label_studio_api_key: Its API token, for those downloads.
    """

    model_config = SettingsConfigDict(env_prefix="SELFTRAIN_", extra="ignore")

    api_token: SecretStr = Field(min_length=1)
    ray_address: str | None = None
    local_ray_cpus: int | None = Field(default=None, gt=0)
    database_url: str | None = None
    data_roots: list[Path] = Field(default_factory=lambda: [Path.cwd()])
    workdir: Path = Path("selftrain-runs")
    repo_dir: Path = REPO_DIR
    job_python: str = "python"
    poll_interval_s: float = Field(default=1.0, gt=0)
    cluster_lost_after_s: float = Field(default=600.0, gt=0)
    cluster_timeout_s: float = Field(default=10.0, gt=0, le=600)
    reconcile_deadline_s: float = Field(default=15.0, gt=0, le=3600)
    reconcile_parallel: int = Field(default=8, gt=0, le=256)
    max_upload_bytes: int = Field(default=20 * 2**20, gt=0)
    max_image_pixels: int = Field(default=40_000_000, gt=0)
    max_json_bytes: int = Field(default=2**20, gt=0)
    predict_max_side: int = Field(default=2048, ge=64, le=16384)
    predict_max_input_pixels: int = Field(default=2048 * 1024, ge=64 * 64)
    predict_request_bytes: int = Field(default=2**30, ge=2**24)
    predict_memory_bytes: int = Field(default=2 * 2**30, ge=2**24)
    predict_device: str = "cpu"
    predict_concurrency: int = Field(default=2, gt=0, le=64)
    predict_wait_s: float = Field(default=120.0, gt=0)
    predict_queue: int = Field(default=32, gt=0, le=1024)
    tracking_uri: str | None = Field(default=None, max_length=2000)
    tracking_ui: str | None = Field(default=None, max_length=2000)
    label_studio_url: str | None = Field(default=None, max_length=2000)
    label_studio_api_key: SecretStr | None = None

    @model_validator(mode="after")
    def _resolve(self) -> Settings:
        # Absolute, symlink-free roots: path checks compare resolved paths against these.
        self.data_roots = [root.expanduser().resolve() for root in self.data_roots]
        self.workdir = self.workdir.expanduser().resolve()
        # `SELFTRAIN_RAY_ADDRESS=` (set but empty) means no address, as unset does.
        self.ray_address = self.ray_address or None
        self.tracking_uri = self.tracking_uri or None
        self.tracking_ui = self.tracking_ui or None
        self.label_studio_url = self.label_studio_url or None
        if self.database_url is None:
            self.database_url = f"sqlite:///{self.workdir / 'service.db'}"
        if not self.data_roots:
            raise ValueError("data_roots: give at least one folder")
        if self.predict_request_bytes > self.predict_memory_bytes:
            raise ValueError("predict_request_bytes: must not exceed predict_memory_bytes")
        return self

    @property
    def allowed_roots(self) -> list[Path]:
        """Where a run spec's paths may point: the data roots, and the workdir (so a run can start
        from a checkpoint or store an earlier run left there)."""
        return [*self.data_roots, self.workdir]


@lru_cache
def get_settings() -> Settings:
    """The settings of this process, read once from the environment."""
    return Settings()  # type: ignore[call-arg]  # api_token comes from the environment
