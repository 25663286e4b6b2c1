"""Where a store lives: a local folder (a `Path`) or a prefix in an object store (`RemotePath`).

`where("s3://bucket/prefix")` gives a RemotePath with the few pathlib methods the store code and the
corpus readers use (`/`, name, exists, is_dir, is_file, iterdir, read_bytes, open, glob, ...); local
paths and file:// URLs stay plain Paths, so a local store behaves exactly as before. The few
operations that differ between the two (durable writes, removing a tree, listing files, a zarr
store over a folder) are functions here.

Remote I/O goes through fsspec (s3fs for s3://, gcsfs for gs://). Credentials and the endpoint come
from the standard environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, ...); no
client is ever pickled or shared across a fork: `fs` asks fsspec, whose instance cache is per process.
Transient failures (connection errors, timeouts, 5xx, SlowDown) are retried with exponential backoff and
jitter (botocore's standard mode), VJEPA_S3_ATTEMPTS times per request; after that, one line. Each request
botocore sends again is counted (`retries`), by this process and the workers it forks, in one shared counter
(aiohttp also resends a GET, HEAD, PUT or DELETE once, uncounted, where a kept-alive connection drops before
its answer).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from fnmatch import fnmatch
from pathlib import Path, PurePosixPath
from types import SimpleNamespace

from common.errors import StoreError, UserError
from common.files import atomic_write_bytes
from common.settings import env_number

EXTRAS = {"s3": "pip install -e '.[s3]' (s3fs)"}  # the project's extra for a scheme, where it has one
READ_BLOCK = 4 * 2**20  # bytes per ranged read of an object (s3fs's default, 50 MiB, would fetch far more than an
# episode needs of a shared video)
TRANSIENT = {"ConnectionError", "HTTPClientError", "TimeoutError", "ClientPayloadError"}  # (class names: their
# modules are optional) and 5xx, SlowDown


def attempts() -> int:
    """Tries per request, the first included (VJEPA_S3_ATTEMPTS; the default's backoff waits about a minute)."""
    return int(env_number("VJEPA_S3_ATTEMPTS", 10, 1))


def client_options(protocol: str) -> dict:
    """fsspec options of our clients: bounded retries with backoff and jitter on transient errors (for s3), and
    VJEPA_S3_TIMEOUT seconds to connect and to wait for the next bytes."""
    if protocol != "s3":
        return {}
    timeout = env_number("VJEPA_S3_TIMEOUT", 30, 0.1)
    return {"config_kwargs": {"retries": {"max_attempts": attempts(), "mode": "standard"},
                              "connect_timeout": timeout, "read_timeout": timeout}}


_retried: list = []  # [the multiprocessing.Value that counts retried requests], once made


def reset_retries() -> None:
    """Count retried requests from 0: in this process and in the workers it forks from now on (DataLoader
    workers), which add to the same counter in shared memory."""
    import multiprocessing

    _retried[:] = [multiprocessing.Value("q", 0)]


def retries() -> int:
    """s3:// requests sent again (botocore's retries) since `reset_retries`, by this process and its workers."""
    return _retried[0].value if _retried else 0


def count_retry(request, **_) -> None:
    """botocore's `request-created` handler (store.s3): every attempt of a request after its first is a retry."""
    if request.context.get("retries", {}).get("attempt", 1) > 1:
        if not _retried:
            reset_retries()
        with _retried[0].get_lock():
            _retried[0].value += 1


def filesystem(protocol: str, **options):
    """This process's fsspec client for a protocol with our options (fsspec caches one per process and thread);
    s3:// through store.s3, whose clients count retries."""
    import fsspec

    if protocol == "s3":
        from .s3 import CountingS3FileSystem as cls
    else:
        cls = fsspec.get_filesystem_class(protocol)
    return cls(use_listings_cache=False, **client_options(protocol), **options)


def unreachable(e: BaseException, what: str) -> StoreError | None:
    """The one-line error for a transient failure that outlasted the retries, else None."""
    names = {c.__name__ for c in type(e).__mro__}
    if not (names & TRANSIENT or any(code in str(e) for code in ("SlowDown", "ServiceUnavailable", "InternalError"))):
        return None
    return StoreError(f"{what}: the object store did not answer after {attempts()} attempts ({type(e).__name__}: "
                      f"{e}); when it is back, run the command again (train: with --resume) to continue")


def is_url(where: str | Path) -> bool:
    return isinstance(where, str) and "://" in where


def where(location: str | Path | RemotePath) -> Path | RemotePath:
    """A store location: Path for local paths and file:// URLs, RemotePath for any other URL."""
    if isinstance(location, (Path, RemotePath)):
        return location
    if is_url(location):
        if location.startswith("file://"):
            return Path(location[len("file://"):])
        from fsspec.registry import known_implementations, registry

        protocol = location.partition("://")[0]
        if protocol not in known_implementations and protocol not in registry:  # (checked once, where a URL comes in)
            raise UserError(f"{location}: {protocol}:// is no storage that fsspec knows (s3://, gs://, az://, ...)")
        return RemotePath(location)
    return Path(location)


@contextmanager
def remote_errors(url: str) -> Iterator[None]:
    """Object-store failures as one line that says what to fix."""
    try:
        yield
    except ImportError as e:
        scheme = url.split("://", 1)[0]
        raise UserError(f"{url}: {scheme}:// needs a package that is not installed: "
                        f"{EXTRAS.get(scheme, str(e))}") from None
    except PermissionError as e:
        raise StoreError(f"{url}: access denied ({e}); check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and the "
                         "bucket's permissions") from None
    except Exception as e:  # botocore's credential errors have no common base class with a stable import
        if (down := unreachable(e, url)) is not None:
            raise down from None
        if "Credentials" in type(e).__name__:
            raise StoreError(f"{url}: no credentials for the object store ({e}); set AWS_ACCESS_KEY_ID and "
                             "AWS_SECRET_ACCESS_KEY (and AWS_ENDPOINT_URL for a server that is not AWS)") from None
        if isinstance(e, FileNotFoundError) and "bucket" in str(e).lower():
            raise StoreError(f"{url}: the bucket does not exist ({e})") from None
        raise


class RemotePath:
    """A key prefix in an object store, spelt as a URL (s3://bucket/key). No directories exist there:
    a "folder" exists when an object has its prefix."""

    def __init__(self, url: str):
        self.protocol, _, key = url.partition("://")
        self.key = key.strip("/")
        if not self.key:
            raise UserError(f"{url}: give a bucket (and a prefix), e.g. {self.protocol}://bucket/store")

    @property
    def url(self) -> str:
        return f"{self.protocol}://{self.key}"

    def __str__(self) -> str:
        return self.url

    def __repr__(self) -> str:
        return f"RemotePath({self.url!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RemotePath) and other.url == self.url

    def __hash__(self) -> int:
        return hash(self.url)

    def __lt__(self, other: RemotePath) -> bool:
        return self.url < other.url

    def __truediv__(self, part: str) -> RemotePath:
        return RemotePath(f"{self.url}/{part}")

    @property
    def name(self) -> str:
        return self.key.rpartition("/")[2]

    @property
    def fs(self):
        """This process's client (fsspec caches one per process: a forked worker makes its own). No
        listing is cached: other ranks add objects meanwhile."""
        with remote_errors(self.url):
            return filesystem(self.protocol)

    def call(self, method: str, *args, **kw):
        with remote_errors(self.url):
            return getattr(self.fs, method)(*args, **kw)

    def exists(self) -> bool:
        return self.call("exists", self.key)

    def is_file(self) -> bool:
        return self.call("isfile", self.key)

    def is_dir(self) -> bool:
        return self.call("isdir", self.key)

    def iterdir(self) -> Iterator[RemotePath]:
        for entry in self.call("ls", self.key, detail=False):
            yield RemotePath(f"{self.protocol}://{entry}")

    def read_bytes(self) -> bytes:
        return self.call("cat_file", self.key)

    # what the corpus readers use besides: an object read in ranges, listing by pattern
    @property
    def parent(self) -> RemotePath:
        return RemotePath(f"{self.protocol}://{self.key.rpartition('/')[0]}")

    @property
    def suffix(self) -> str:
        return PurePosixPath(self.key).suffix

    @property
    def stem(self) -> str:
        return PurePosixPath(self.key).stem

    def open(self, mode: str = "rb"):
        """A seekable file over the object: each read fetches the range it needs, in blocks of READ_BLOCK."""
        return self.call("open", self.key, mode, block_size=READ_BLOCK)

    def read_text(self) -> str:
        return self.read_bytes().decode()

    def stat(self) -> SimpleNamespace:
        return SimpleNamespace(st_size=self.call("size", self.key))

    def glob(self, pattern: str) -> list[RemotePath]:
        return [RemotePath(f"{self.protocol}://{k}") for k in sorted(self.call("glob", f"{self.key}/{pattern}"))]

    def rglob(self, pattern: str) -> list[RemotePath]:
        """Objects below this prefix whose name matches `pattern`."""
        keys = self.call("find", self.key)
        return [RemotePath(f"{self.protocol}://{k}") for k in sorted(keys) if fnmatch(k.rpartition("/")[2], pattern)]

    def relative_to(self, other: RemotePath) -> PurePosixPath:
        if not self.key.startswith(other.key + "/"):
            raise ValueError(f"{self} is not under {other}")
        return PurePosixPath(self.key[len(other.key) + 1:])

    def bucket_exists(self) -> bool:
        return self.call("exists", self.key.partition("/")[0])


def write_bytes(path: Path | RemotePath, data: bytes) -> None:
    """Replace a file whole: locally by an fsynced rename, remotely by one PUT (atomic by itself)."""
    if isinstance(path, RemotePath):
        path.call("pipe_file", path.key, data)
    else:
        atomic_write_bytes(path, data)


def upload(files: dict[str, Path], folder: RemotePath) -> None:
    """PUT local files under a remote folder (relative name -> local path), concurrently."""
    if files:
        folder.call("put", [str(p) for p in files.values()], [f"{folder.key}/{rel}" for rel in files])


def remove_tree(path: Path | RemotePath) -> None:
    if isinstance(path, RemotePath):
        if path.exists():
            path.call("rm", path.key, recursive=True)
    else:
        import shutil

        shutil.rmtree(path, ignore_errors=True)


def list_files(folder: Path | RemotePath) -> list[str]:
    """Relative posix names of every file under a folder, sorted."""
    if isinstance(folder, RemotePath):
        return sorted(p[len(folder.key) + 1:] for p in folder.call("find", folder.key))
    return sorted(p.relative_to(folder).as_posix() for p in Path(folder).rglob("*") if p.is_file())


def tree_bytes(folder: Path | RemotePath) -> int:
    if isinstance(folder, RemotePath):
        return int(folder.call("du", folder.key, total=True)) if folder.exists() else 0
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def zarr_store(folder: Path | RemotePath, read_only: bool):
    """A zarr v3 store over a folder: LocalStore, or zarr's FsspecStore with an async client."""
    if isinstance(folder, RemotePath):
        from zarr.storage import FsspecStore

        with remote_errors(folder.url):
            return FsspecStore(filesystem(folder.protocol, asynchronous=True), path=folder.key, read_only=read_only)
    from zarr.storage import LocalStore

    return LocalStore(folder, read_only=read_only)

