"""s3:// through s3fs, with every request botocore sends again counted (store.location.retries)."""

from __future__ import annotations

from s3fs import S3FileSystem

from .location import count_retry


class CountingS3FileSystem(S3FileSystem):
    """s3fs's filesystem; each botocore client it makes reports its requests' attempts to `count_retry`."""

    async def set_session(self, refresh: bool = False, kwargs: dict | None = None):
        client = await super().set_session(refresh, kwargs or {})
        client.meta.events.register("request-created.s3", count_retry, unique_id="vjepa-count-retries")
        return client
