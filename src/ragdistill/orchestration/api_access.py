"""Who can reach a Prefect API, and who can read the project's server's files.

Prefect's open-source server has no users: anyone who reaches its API may create runs, change deployments
and work pools, and read every log and parameter, unless ``PREFECT_SERVER_API_AUTH_STRING`` turns on its
basic authentication (``PREFECT_API_AUTH_STRING`` on each client; ``/api/health`` stays open). The
project's own server listens on 127.0.0.1 only (``orchestration.server``); an API elsewhere is used only
when it refuses a request without credentials and this process holds its credentials
(:func:`check_protected_api`). The server's home, database and log are the owner's alone
(:func:`keep_owner_only`).
"""

from __future__ import annotations

import base64
import http.client
import ipaddress
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable
from pathlib import Path

from ragdistill.errors import UserFacingError

AUTH_STRING_ENV = "PREFECT_API_AUTH_STRING"
SERVER_AUTH_STRING_ENV = "PREFECT_SERVER_API_AUTH_STRING"
API_KEY_ENV = "PREFECT_API_KEY"
API_URL_ENV = "PREFECT_API_URL"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
OWNER_ONLY_UMASK = 0o077
"""The umask of the project's server: its database and every other file it makes are the owner's alone."""
PROTECTED_PATH = "/admin/version"
"""An API path a server with basic authentication serves only to a request that carries its auth string."""


class OpenApiError(UserFacingError, RuntimeError):
    """A Prefect API beyond this machine answers without credentials, or this process holds none it takes."""


def is_loopback_host(host: str | None) -> bool:
    """Whether an API at ``host`` is reachable from this machine only: ``localhost`` or a loopback address.
    ``0.0.0.0`` and every other name or address may be reached from elsewhere."""
    if host is None:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def client_credentials() -> dict[str, str]:
    """The Authorization header Prefect's client sends: basic auth from ``PREFECT_API_AUTH_STRING``, else
    Prefect Cloud's ``PREFECT_API_KEY``; empty when neither is set."""
    auth_string = os.environ.get(AUTH_STRING_ENV)
    if auth_string:
        return {"Authorization": "Basic " + base64.b64encode(auth_string.encode()).decode()}
    api_key = os.environ.get(API_KEY_ENV)
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def http_status(url: str, timeout_s: float, headers: dict[str, str]) -> int | None:
    """The HTTP status of a GET of ``url`` (without a proxy on loopback), or None when nothing answers in
    time."""
    request = urllib.request.Request(url, headers=headers)
    handlers = []
    if urllib.parse.urlsplit(url).hostname in LOOPBACK_HOSTS:
        handlers.append(urllib.request.ProxyHandler({}))
    try:
        with urllib.request.build_opener(*handlers).open(request, timeout=timeout_s) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code
    except (OSError, http.client.HTTPException):
        return None


def check_protected_api(api_url: str, local_host: str, timeout_s: float = 10.0) -> None:
    """Refuse an API beyond this machine (not :func:`is_loopback_host`) that answers without credentials,
    that this process holds no credentials for, or whose server refuses them. ``local_host`` is where the
    project's own server listens, named in the remedy."""
    host = urllib.parse.urlsplit(api_url).hostname
    if is_loopback_host(host):
        return
    probe = api_url.rstrip("/") + PROTECTED_PATH
    if http_status(probe, timeout_s, {}) == 200:
        raise OpenApiError(
            f"the Prefect API at {api_url} answers requests without credentials, so anyone who reaches {host} "
            f"may start runs, change deployments and work pools, and read every log: start that server with "
            f"{SERVER_AUTH_STRING_ENV}=USER:PASSWORD (Prefect's basic authentication) and set {AUTH_STRING_ENV} "
            f"to the same here, or unset {API_URL_ENV} to use the project's own server on {local_host}"
        )
    credentials = client_credentials()
    if not credentials:
        raise OpenApiError(
            f"the Prefect API at {api_url} is beyond this machine and {AUTH_STRING_ENV} is not set: set it to "
            f"that server's {SERVER_AUTH_STRING_ENV} (USER:PASSWORD)"
        )
    if http_status(probe, timeout_s, credentials) in (401, 403):
        raise OpenApiError(
            f"the Prefect API at {api_url} refuses this process's credentials: set {AUTH_STRING_ENV} to that "
            f"server's {SERVER_AUTH_STRING_ENV} (USER:PASSWORD)"
        )


def keep_owner_only(home: Path, names: Iterable[str]) -> None:
    """Take group and other permissions off ``home`` and the files ``names`` in it (a home or database made
    before, or by Prefect itself, may be readable by every local user). Links and paths this user does
    not own are left as they are."""
    for path in (home, *(home / name for name in names)):
        try:
            status = path.lstat()
        except OSError:
            continue
        if status.st_uid == os.getuid() and status.st_mode & 0o077 and not path.is_symlink():
            path.chmod(status.st_mode & 0o700)
