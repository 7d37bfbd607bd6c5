"""Settings of the service, read from the environment (prefix `CPC_`).

Every setting of the public contract (docs/api.md) is here with its documented
default, plus the knobs of batching and onnxruntime. `create_app` takes a
`Settings` object, so tests build one directly instead of touching the
environment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_MODELS_DIR = Path(__file__).resolve().parent.parent / "models"


class Settings(BaseSettings):
    """Limits, locations and tuning of one service process."""

    model_config = SettingsConfigDict(env_prefix="CPC_", extra="ignore")

    models_dir: Path = Field(
        default=DEFAULT_MODELS_DIR,
        description="folder of model bundles, one sub-folder (with bundle.json) each",
    )
    data_dir: Path = Field(
        default=Path("./data"), description="where embedded collections are stored"
    )
    collection_backend: Literal["embedded", "milvus"] = Field(
        default="embedded",
        description="embedded: SQLite + FAISS in this process (one server per data folder); "
        "milvus: a Milvus server holds the collections, so API processes keep no state and "
        "several may serve them (`serve --workers N`, replicas)",
    )
    milvus_uri: str = Field(
        default="http://127.0.0.1:19530", description="the Milvus server (backend milvus)"
    )
    milvus_token: str | None = Field(
        default=None, repr=False, description="Milvus credentials, `user:password` or a token"
    )
    milvus_db: str = Field(default="default", description="the Milvus database of the collections")
    milvus_prefix: str = Field(
        default="cpc_",
        description="prefix of this service's collection names in Milvus, so that several "
        "deployments can share one database",
    )
    milvus_consistency: Literal["Strong", "Session", "Bounded", "Eventually"] = Field(
        default="Strong",
        description="Milvus read consistency: Strong sees every acknowledged write from any "
        "process (a query waits for the time tick, about 200 ms); Session only this process's; "
        "Bounded and Eventually may miss writes of the last seconds",
    )
    api_key: str | None = Field(
        default=None,
        repr=False,
        description="when set, every route but /health and /ready needs `Authorization: Bearer`",
    )
    read_api_key: str | None = Field(
        default=None,
        repr=False,
        description="a second, read-only bearer key: /embed, /v1/embeddings, /search and GETs, "
        "but 403 on a write (PUT, POST or DELETE of collections and items)",
    )
    max_request_bytes: int = Field(
        default=26_214_400, gt=0, description="larger bodies get 413 before they are read whole"
    )
    max_batch: int = Field(default=64, gt=0, description="most inputs (or items) in one request")
    max_audio_seconds: float = Field(default=600.0, gt=0, description="longest decoded audio input")
    max_image_pixels: int = Field(
        default=40_000_000,
        gt=0,
        description="largest image (width x height), checked before decoding",
    )
    max_text_chars: int = Field(default=100_000, gt=0, description="longest text input")
    max_k: int = Field(default=1000, gt=0, description="largest `k` in a search")
    max_filter_terms: int = Field(
        default=1024,
        gt=0,
        description="most key tests plus in/nin values in one search filter",
    )
    max_filter_depth: int = Field(
        default=8, gt=0, description="deepest nesting of and/or/not in one search filter"
    )
    max_queries: int = Field(default=64, gt=0, description="most queries in one /search call")
    max_page: int = Field(
        default=1000, gt=0, description="largest `limit` when paging through a collection's items"
    )
    max_metadata_bytes: int = Field(
        default=65536, gt=0, description="largest metadata object of one item, as JSON bytes"
    )
    max_vector_dim: int = Field(
        default=8192,
        gt=0,
        description="longest vector a request may send (413 above it; 409 for any other length "
        "than the collection's dim)",
    )
    request_timeout_s: float = Field(
        default=60.0,
        gt=0,
        description="longest a request may take before it is answered 504 (408 while its body "
        "is still arriving); the work is cancelled, or abandoned where it runs in a thread",
    )
    snapshot_interval_s: float = Field(
        default=300.0,
        ge=0,
        description="seconds between index snapshots of changed collections (0: only on shutdown)",
    )
    check_stores: bool = Field(
        default=True,
        description="at start, run SQLite's quick_check over every collection's store (it "
        "reads every page: about a second per GB) so that a damaged one is taken out of "
        "service with a reason rather than failing later; off: only the header is checked",
    )
    ready_requires_storage: bool = Field(
        default=False,
        description="/ready answers 503 while the data folder refuses writes (a full disk), "
        "so that a load balancer sends traffic elsewhere; off: 200, with the `storage` field "
        "saying so (reads and searches still work)",
    )
    storage_probe_bytes: int = Field(
        default=1 << 20,
        ge=1,
        description="while writes fail, each /ready writes and removes a file of this size in "
        "the data folder; once that works, it reports the folder writable again (1 MiB: "
        "room for a few write transactions)",
    )
    max_queue: int = Field(
        default=1024, gt=0, description="inputs waiting for inference (per model) before 429"
    )
    batch_wait_ms: float = Field(
        default=0.0,
        ge=0,
        description="extra time a batch waits for more inputs after its first one; 0: none, "
        "a batch takes what queued while the previous one ran (lowest latency, and batches "
        "still grow with the load)",
    )
    max_inference_batch: int = Field(
        default=0,
        ge=0,
        description="most inputs in one onnxruntime call; 0: per modality, 16 for audio and "
        "images (larger calls gained no throughput in-process and double the latency) and 64 "
        "for text (its calls are so short that fixed per-call costs dominate)",
    )
    inference_instances: int = Field(
        default=0,
        ge=0,
        description="onnxruntime calls a model may run at once, each on a batch of its own; 0: "
        "one per core (up to 4), each on its share of the cores (on 2 cores two one-thread "
        "calls embed 40% more audio a second than one two-thread call, and text calls overlap "
        "the HTTP work)",
    )
    intra_op_threads: int = Field(
        default=0,
        ge=0,
        description="onnxruntime intra-op threads per call; 0: per modality, 1 for text (its "
        "calls are too short to gain from a second thread), and for audio and images the cores "
        "divided among the model's CPC_INFERENCE_INSTANCES (the cores for a serial caller such "
        "as embed-folder)",
    )
    onnx_spinning: bool = Field(
        default=False,
        description="let onnxruntime's threads spin between calls (lower latency on an idle "
        "machine with spare cores; off: they leave the cores to HTTP and decoding)",
    )
    release_memory: bool = Field(
        default=True,
        description="once a model's queue is empty, shrink its onnxruntime arena and return "
        "free memory to the system, so a rare large batch does not raise the resident size for "
        "good",
    )
    use_quantized: bool = Field(
        default=False, description="serve model.quant.onnx when a bundle ships one"
    )
    warmup: bool = Field(default=True, description="run each model once before reporting ready")
    lean_embed_path: bool = Field(
        default=True,
        description="serve JSON POST /embed and /v1/embeddings on the lean path of "
        "service.api.fast_path (the same answers, a fraction of the HTTP overhead for one-input "
        "requests); off: every request goes through the full middleware stack",
    )
    cors_origins: list[str] = Field(
        default_factory=list, description="origins allowed by CORS (JSON list); empty: no CORS"
    )
    log_format: Literal["json", "text"] = Field(
        default="json",
        description="`cpc-embed serve` logs: one JSON object per line, or plain text",
    )
    max_original_bytes: int = Field(
        default=262_144,
        ge=0,
        description="largest original kept with an item added from a file or text (an image "
        "thumbnail, the start of a clip, the text), so that results can be shown and played; "
        "0 keeps none. 256 KiB holds a 5 s clip as 16 kHz 16-bit mono WAV (160 kB), a "
        "thumbnail (a few kB) or a long text",
    )
    original_clip_seconds: float = Field(
        default=5.0,
        gt=0,
        le=3600,
        description="an audio original keeps this many seconds from the start (less if "
        "CPC_MAX_ORIGINAL_BYTES is smaller): enough to recognise a clip by ear",
    )
    thumbnail_px: int = Field(
        default=128,
        ge=8,
        le=4096,
        description="longest side in pixels of an image original (a JPEG thumbnail): the size "
        "of a search result on a page",
    )
    max_map_points: int = Field(
        default=2000,
        gt=0,
        description="most items a collection map (GET /collections/{name}/map) may place; "
        "its PCA costs time in proportion, and 2000 points still read as a picture",
    )
