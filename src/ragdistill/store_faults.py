"""Object-store failures as errors a user can act on.

s3fs and botocore report a stopped server, a missing bucket or refused credentials as
``EndpointConnectionError``, ``FileNotFoundError("The specified bucket does not exist")`` or
``PermissionError``, deep inside a traceback. :func:`storage_faults` turns each into a
:class:`StorageError` that names the object, the bucket and the endpoint and says what to check; a
missing key stays a ``FileNotFoundError`` for the store to report as a missing artifact.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from fsspec import AbstractFileSystem
from fsspec.implementations.local import LocalFileSystem

from ragdistill.errors import UserFacingError

MISSING_BUCKET = "specified bucket does not exist"


class StorageError(UserFacingError, RuntimeError):
    """The run root's storage cannot be reached, does not exist or refuses the credentials; the message
    names the endpoint and bucket and says what to check."""


def describe_storage(fs: AbstractFileSystem, root: str) -> str:
    """Where the run root ``root`` of filesystem ``fs`` lives: its folder, or the bucket and endpoint of
    its object store."""
    if isinstance(fs, LocalFileSystem):
        return f"the folder {root}"
    endpoint = getattr(fs, "endpoint_url", None) or getattr(fs, "client_kwargs", {}).get("endpoint_url")
    bucket = root.split("/", 1)[0]
    return f"bucket '{bucket}' at {endpoint or 'the default AWS endpoint'}"


@contextmanager
def storage_faults(fs: AbstractFileSystem, root: str, uri: str) -> Iterator[None]:
    """Object-store failures inside the block, which touches ``uri`` under the run root ``root`` of
    ``fs``, as :class:`StorageError` (local disks: unchanged)."""
    if isinstance(fs, LocalFileSystem):
        yield
        return
    where = f"{uri}: {describe_storage(fs, root)}"
    try:
        yield
    except FileNotFoundError as error:
        if MISSING_BUCKET not in str(error):
            raise
        raise StorageError(
            f"{where} does not exist. Create the bucket or fix run.run_root, then run the stage again."
        ) from error
    except PermissionError as error:
        raise StorageError(
            f"{where} refused the credentials ({error}). Check AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, then run the stage again."
        ) from error
    except Exception as error:
        from botocore.exceptions import BotoCoreError  # loaded by s3fs already; local runs skip it

        if not isinstance(error, BotoCoreError | OSError):
            raise
        raise StorageError(
            f"{where} failed ({error}). Check that the object store is up and AWS_ENDPOINT_URL points at "
            "it, then run the stage again: finished work is kept and resumed."
        ) from error
