"""Settings read from the environment (prefix PROMPTDEX_, nested groups with `__`) and `.env`."""

from __future__ import annotations

from enum import StrEnum
from functools import cached_property
from pathlib import Path

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ModelsMode(StrEnum):
    """Which models the generator and the embedders load."""

    DEFAULT = "default"
    TINY = "tiny"


class DatabaseSettings(BaseModel):
    """Connection pool and embedded-server knobs."""

    pool_min_size: int = Field(1, ge=0, description="Connections the API pool keeps open.")
    pool_max_size: int = Field(10, ge=1, description="Most connections the API pool opens.")
    connect_timeout: float = Field(10.0, gt=0, description="Seconds to wait for a connection.")
    request_timeout: float = Field(
        2.0, gt=0, description="Seconds an API request waits for a pooled connection before it answers 503.")
    embedded_start_timeout: float = Field(60.0, gt=0, description="Seconds to wait for the embedded server.")
    reconnect_seconds: float = Field(
        120.0, ge=0, description="Seconds a long-running process (a worker, the folder watch) keeps trying to "
        "reconnect after it lost the database (the embedded server is started again), before it stops with an "
        "error; 0 stops it at once.")


class GeneratorSettings(BaseModel):
    """Defaults for `promptdex generate` and `promptdex worker`."""

    model: str = Field("stabilityai/sd-turbo", description="Default model: hub id, diffusers folder, or checkpoint "
                       "file.")
    models: list[str] = Field(
        default_factory=list, description="Models the API and the page offer (JSON list; empty: only the default "
        "model; with PROMPTDEX_MODELS=tiny: only tiny).")
    refiners: dict[str, str] = Field(
        default_factory=dict, description='SDXL refiners by base model, as JSON, e.g. {"BASE": "REFINER"}; a base '
        "with one runs it for the last steps.")
    device: str = Field("auto", description="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N, mps.")
    dtype: str = Field("auto", description="auto (float16 on cuda, float32 otherwise), float32, float16, bfloat16.")
    steps: int | None = Field(None, ge=1, description="Default sampling steps (unset: the model profile's).")
    cfg: float | None = Field(None, ge=0, description="Default guidance scale (unset: the model profile's).")
    sampler: str | None = Field(None, description="Default sampler, A1111 name or diffusers class (unset: the "
                                "model profile's).")
    width: int | None = Field(None, ge=8, description="Default width in pixels (unset: the model profile's).")
    height: int | None = Field(None, ge=8, description="Default height in pixels (unset: the model profile's).")
    batch_size: int = Field(4, ge=1, description="Images per pipeline call.")
    threads: int | None = Field(
        None, ge=1, description="torch CPU threads while generating (unset: torch's default); recorded per image."
    )
    inputs_dir: Path | None = Field(None, description="Kept img2img init images (default IMAGES_DIR/.inputs).")
    poll_seconds: float = Field(30.0, gt=0, description="How often an idle `promptdex worker` looks for jobs "
                                "(new jobs wake it at once by NOTIFY; this catches jobs whose worker died).")
    lease_seconds: float = Field(
        600.0, gt=0, description="A worker's hold on a job, renewed every third of it while the worker lives; "
        "a job whose worker died is retried after it.")
    max_attempts: int = Field(3, ge=1, description="Times a job is tried (its worker died, or a retryable error) "
                              "before it is marked failed.")


class Runtime(StrEnum):
    """What runs the encoders (CLIP towers, the prompt model)."""

    AUTO = "auto"  # ONNX Runtime on the CPU when it is installed, torch otherwise and on a GPU
    TORCH = "torch"
    ONNX = "onnx"


class BundleLayout(StrEnum):
    """How approximate bundles store their vectors."""

    STANDARD = "standard"
    COMPACT = "compact"


class IndexerSettings(BaseModel):
    """Embedders, bundles and keyword back end."""

    clip_model: str = Field("ViT-B-32", description="open_clip model name.")
    clip_pretrained: str = Field("laion2b_s34b_b79k", description="open_clip pretrained tag or checkpoint file.")
    text_model: str = Field("all-MiniLM-L6-v2", description="sentence-transformers model for prompt vectors.")
    device: str = Field("auto", description="Device for the embedders.")
    runtime: Runtime = Field(
        Runtime.AUTO, description="What runs the encoders: auto (on the CPU, ONNX Runtime for the API's queries and "
        "the prompt model when installed, torch for `index`'s batched image tower; torch on a GPU), torch or onnx. "
        "Not part of a model's identity: bundles serve under either.")
    onnx_dir: Path | None = Field(
        None, description="Where encoders exported to ONNX are cached (default MODELS_DIR/onnx).")
    query_cache: int = Field(4096, ge=0, description="Query vectors the API keeps (LRU, per model; 0: none).")
    batch_wait_ms: float = Field(
        2.0, ge=0, le=50, description="How long the API lets concurrent query embeddings gather into one model "
        "call (at most; a lone query waits about a tenth of it).")
    batch_size: int = Field(32, ge=1, description="Images per embedding batch.")
    thumb_size: int = Field(384, ge=16, description="Long side of thumbnails in pixels.")
    exact_threshold: int = Field(200_000, ge=0, description="Below this many vectors a bundle is exact (flat).")
    approx_factory: str = Field(
        "IVF{nlist},PQ{pq}x4fs,Refine(SQ8)",
        description="FAISS factory string of the approximate index ({nlist}: 2*sqrt(count); {pq}: dim/2).")
    bundle_layout: BundleLayout = Field(
        BundleLayout.STANDARD, description="Approximate bundles: standard (approx_factory, ~660 bytes a 512-d "
        "vector, recall@10 0.96 at 1M) or compact (OPQ64_256,IVF,PQ64x4fs,Refine(PQ128np): ~180 bytes a vector, "
        "recall@10 only ~0.62 at 1M on synthetic vectors; see BENCHMARKS.md).")
    nprobe: int = Field(128, ge=1, description="Inverted lists an approximate index searches (at least).")
    nprobe_share: float = Field(
        0.125, ge=0, le=1, description="Share of an approximate index's inverted lists searched, when that is more "
        "than NPROBE: a retrain or rebuild that makes more, smaller lists keeps its recall (0: NPROBE only).")
    checkpoint_every: int = Field(
        10_000, ge=1, description="`promptdex index` saves the bundles after this many new vectors.")
    import_workers: int = Field(0, ge=0, description="Threads that decode images on import (0: one per CPU core).")
    watch_settle_seconds: float = Field(
        10.0, gt=0, description="`import --watch`: a file with no close-write event is imported once its size and "
        "mtime have not changed for this long (writers whose close the watcher cannot see, network drives).")
    watch_rescan_seconds: float = Field(
        300.0, gt=0, description="`import --watch`: the watched folders are scanned again this often, for events "
        "the file system did not deliver.")
    watch_polling: bool = Field(
        False, description="`import --watch`: poll the folders instead of using inotify (network drives).")
    max_image_pixels: int = Field(
        100_000_000, ge=1, description="Larger images are rejected on import (decompression bombs).")
    keyword_backend: str = Field("postgres", description="postgres or meilisearch.")
    meili_url: str | None = Field(None, description="Meilisearch URL when keyword_backend=meilisearch.")
    meili_key: str | None = Field(None, description="Meilisearch API key.")


class AnonymousAccess(StrEnum):
    """What callers without an account may do."""

    NONE = "none"  # a private instance: everything but the page itself needs a sign-in
    READ = "read"  # search, image detail, files, similar and upload search
    CREATE = "create"  # read, and queue generation jobs (loopback only: `serve` refuses it on other addresses)


class ApiSettings(BaseModel):
    """HTTP server, accounts, quotas and the security settings of the API."""

    host: str = Field("127.0.0.1", description="Address `promptdex serve` binds.")
    port: int = Field(8000, ge=1, le=65535, description="Port `promptdex serve` binds.")
    max_upload_bytes: int = Field(20 * 1024 * 1024, ge=1, description="Largest accepted upload.")
    max_upload_pixels: int = Field(50_000_000, ge=1, description="Most pixels in an accepted upload.")
    max_json_bytes: int = Field(64 * 1024, ge=256, description="Largest accepted JSON request body.")
    anonymous: AnonymousAccess = Field(
        AnonymousAccess.READ, description="What callers without an account may do: none, read or create.")
    secret: str | None = Field(
        None, description="Server secret that signs cursors (unset: one generated into DATA_DIR/api-secret). "
        "Give every replica the same one.")
    allowed_hosts: str = Field(
        "localhost,127.0.0.1,::1", description="Comma-separated Host names the API answers (`*` for any; a "
        "leading `*.` matches subdomains); other Host headers get 400.")
    cors_origins: str = Field("", description="Comma-separated origins allowed to call the API from other sites "
                              "(empty: CORS off).")
    forwarded_allow_ips: str = Field(
        "127.0.0.1", description="Proxies whose X-Forwarded-For/-Proto headers are trusted (`promptdex serve`).")
    session_days: float = Field(14.0, gt=0, description="How long a browser sign-in lasts.")
    login_link_minutes: float = Field(
        60.0, gt=0, description="How long the one-time sign-in link printed by `serve` on loopback stays valid.")
    rate_burst: int = Field(30, ge=1, description="API requests per second per caller (token, user or address).")
    rate_sustained: int = Field(600, ge=1, description="API requests per minute per caller.")
    login_attempts: int = Field(10, ge=1, description="Sign-in attempts per minute per client address.")
    images_per_hour: int = Field(200, ge=0, description="Images a user may request per hour (admins exempt).")
    images_queued: int = Field(32, ge=0, description="Images a user may have queued or running at once "
                               "(admins exempt).")
    queue_cap: int = Field(1000, ge=0, description="Images queued or running at once, over all users.")


class SafeLevel(StrEnum):
    """How much of the corpus a search shows (the API's `safe`)."""

    STRICT = "strict"  # only images scored below STRICT_THRESHOLD by every configured classifier
    MODERATE = "moderate"  # also flagged ones, blurred on the page; hides those at MODERATE_THRESHOLD or above
    OFF = "off"  # everything

    @property
    def rank(self) -> int:
        return _LEVEL_RANK[self]


_LEVEL_RANK = {SafeLevel.STRICT: 0, SafeLevel.MODERATE: 1, SafeLevel.OFF: 2}


class SafetySettings(BaseModel):
    """NSFW classifiers, the thresholds of the safe-mode levels, and the levels each role gets."""

    classifiers: str = Field(
        "auto", description="Comma-separated classifiers: words (the prompt word list), nudenet (pip install "
        "promptdex[nudenet], AGPL-3.0), sd-checker (diffusers' StableDiffusionSafetyChecker; needs CHECKER_PATH); "
        "auto: words, plus nudenet when installed and sd-checker when CHECKER_PATH is set; none: score nothing "
        "(every image counts as safe).")
    words_file: Path | None = Field(
        None, description="Admin-editable word list added to the shipped one (default DATA_DIR/nsfw-words.txt; one "
        "word or phrase per line, optional `= score`; `!word` drops a shipped entry).")
    checker_path: str | None = Field(
        None, description="Folder (or hub id, loaded offline) of a StableDiffusionSafetyChecker with its "
        "preprocessor_config.json, e.g. a Stable Diffusion model's safety_checker folder.")
    strict_threshold: float = Field(
        0.5, ge=0, le=1, description="Images (or prompts) scoring at or above this are flagged: hidden in strict "
        "mode, blurred in moderate, `nsfw: true` in the Lexica API.")
    moderate_threshold: float = Field(
        0.9, ge=0, le=1, description="Images scoring at or above this are hidden in moderate mode too.")
    generation_threshold: float = Field(
        0.5, ge=0, le=1, description="Prompts scoring at or above this are refused for generation (admins exempt).")
    refusal_message: str = Field(
        "this prompt asks for content this instance does not generate", description="What a refused generation "
        "request is told (the matched words follow it).")
    anonymous_default: SafeLevel = Field(SafeLevel.STRICT, description="Level of searches without an account.")
    anonymous_max: SafeLevel = Field(
        SafeLevel.MODERATE, description="Most permissive level callers without an account may ask for (off only "
        "when an admin sets it so).")
    viewer_default: SafeLevel = Field(SafeLevel.STRICT, description="Default level of viewers.")
    viewer_max: SafeLevel = Field(SafeLevel.OFF, description="Most permissive level viewers may ask for.")
    creator_default: SafeLevel = Field(SafeLevel.MODERATE, description="Default level of creators.")
    creator_max: SafeLevel = Field(SafeLevel.OFF, description="Most permissive level creators may ask for.")
    admin_default: SafeLevel = Field(SafeLevel.MODERATE, description="Default level of admins (they may ask for any).")


class StorageSettings(BaseModel):
    """How an object store named by STORAGE_URL is reached (credentials: the usual AWS_* variables)."""

    endpoint_url: str | None = Field(None, description="S3 endpoint of an S3-compatible store (unset: AWS_ENDPOINT_URL "
                                     "or AWS itself).")
    region: str | None = Field(None, description="S3 region (unset: AWS_REGION / AWS_DEFAULT_REGION).")
    allow_http: bool = Field(False, description="Allow a plain-http endpoint (implied by an http:// endpoint_url).")
    timeout_seconds: float = Field(10.0, gt=0, description="Seconds one storage request may take.")
    max_retries: int = Field(2, ge=0, description="Retries of a failed storage request.")
    poll_seconds: float = Field(10.0, gt=0, description="How often the API looks for a newly published bundle.")


class Settings(BaseSettings):
    """Every promptdex setting. Build with `get_settings()`, never at import."""

    model_config = SettingsConfigDict(
        env_prefix="PROMPTDEX_",
        env_nested_delimiter="__",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
    )

    data_dir: Path = Field(Path("./data"), description="Where images, thumbnails, indexes and the database live.")
    database_url: str | None = Field(
        None, description="PostgreSQL URL (>= 14). Unset: an embedded server under the data dir."
    )
    models: ModelsMode = Field(ModelsMode.DEFAULT, description="default, or tiny (built-in offline models).")
    images_dir: Path | None = Field(None, description="Generated images (default DATA_DIR/images).")
    thumbs_dir: Path | None = Field(None, description="Thumbnails (default DATA_DIR/thumbs).")
    indexes_dir: Path | None = Field(None, description="FAISS bundles (default DATA_DIR/indexes).")
    models_dir: Path | None = Field(None, description="Locally built models (default DATA_DIR/models).")
    postgres_dir: Path | None = Field(None, description="Embedded PostgreSQL (default DATA_DIR/postgres).")
    watch: str | None = Field(
        None, description="Folders `serve` and `demo` watch (separated by ':'): new images are imported and indexed "
        "as they are written, as with `promptdex import --watch`.")
    storage_url: str | None = Field(
        None, description="Shared storage for generated images, thumbnails and published bundles: a folder, "
        "file:///path or s3://bucket/prefix (unset: the local images, thumbs and indexes folders).")

    db: DatabaseSettings = DatabaseSettings()
    generator: GeneratorSettings = GeneratorSettings()
    indexer: IndexerSettings = IndexerSettings()
    api: ApiSettings = ApiSettings()
    safety: SafetySettings = SafetySettings()
    storage: StorageSettings = StorageSettings()

    @cached_property
    def data_path(self) -> Path:
        """The data dir as an absolute path."""
        return self.data_dir.expanduser().resolve()

    def _sub(self, override: Path | None, name: str) -> Path:
        return override.expanduser().resolve() if override is not None else self.data_path / name

    def _local_storage(self, name: str) -> Path | None:
        """A local STORAGE_URL (a folder or file://) holds the images and thumbs folders."""
        url = self.storage_url
        if not url or url.startswith("s3://"):
            return None
        from urllib.parse import unquote, urlparse

        parsed = urlparse(url)
        root = Path(unquote(parsed.path)) if parsed.scheme == "file" else Path(url)
        return root.expanduser().resolve() / name

    @property
    def images_path(self) -> Path:
        return self._local_storage("images") or self._sub(self.images_dir, "images")

    @property
    def thumbs_path(self) -> Path:
        return self._local_storage("thumbs") or self._sub(self.thumbs_dir, "thumbs")

    @property
    def indexes_path(self) -> Path:
        return self._sub(self.indexes_dir, "indexes")

    @property
    def models_path(self) -> Path:
        return self._sub(self.models_dir, "models")

    @property
    def words_path(self) -> Path:
        """The admin-editable NSFW word list (it need not exist)."""
        return self._sub(self.safety.words_file, "nsfw-words.txt")

    @property
    def onnx_path(self) -> Path:
        """Where exported ONNX encoders are cached."""
        return self._sub(self.indexer.onnx_dir, "models/onnx") if self.indexer.onnx_dir else self.models_path / "onnx"

    @property
    def postgres_path(self) -> Path:
        return self._sub(self.postgres_dir, "postgres")


def get_settings(**overrides: object) -> Settings:
    """Read settings from the environment and `.env`; keyword overrides win."""
    return Settings(**overrides)  # type: ignore[arg-type]


def describe_settings() -> list[tuple[str, str, str]]:
    """(environment variable, default, description) for every setting, for docs and `.env.example`."""
    rows: list[tuple[str, str, str]] = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            annotation = field.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                walk(annotation, f"{prefix}{name.upper()}__")
                continue
            default = field.default
            shown = "" if default is None else (default.value if isinstance(default, StrEnum) else str(default))
            rows.append((f"{prefix}{name.upper()}", shown, field.description or ""))

    walk(Settings, "PROMPTDEX_")
    return rows


def env_example() -> str:
    """The text of `.env.example`: every setting, its description and default."""
    lines = [
        "# promptdex settings. Copy to .env (or export them) and change what you need.",
        "# Nested groups use a double underscore: PROMPTDEX_GROUP__NAME. Commented lines show the defaults.",
    ]
    group = None
    for variable, default, description in describe_settings():
        current = variable.split("__")[0] if "__" in variable else "PROMPTDEX"
        if current != group:
            lines.append("")
            group = current
        lines += [f"# {description}", f"# {variable}={default}"]
    return "\n".join(lines) + "\n"


def markdown_table() -> str:
    """The configuration table of README.md."""
    rows = ["| variable | default | what |", "|---|---|---|"]
    for variable, default, description in describe_settings():
        rows.append(f"| `{variable}` | {f'`{default}`' if default else '(unset)'} | {description} |")
    return "\n".join(rows) + "\n"


def write_docs(repo: Path) -> None:
    """Regenerate `.env.example` and README's configuration table (between its config markers)."""
    (repo / ".env.example").write_text(env_example())
    readme = repo / "README.md"
    text = readme.read_text()
    start, end = "<!-- config:start -->\n", "<!-- config:end -->"
    head, _, rest = text.partition(start)
    _, _, tail = rest.partition(end)
    readme.write_text(head + start + markdown_table() + end + tail)


if __name__ == "__main__":
    write_docs(Path.cwd())
