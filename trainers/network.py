"""Whether the Hugging Face hub can be reached, and whether a failure was the network's: one answer for
loading a model (trainers/models.py) and for uploading (trainers/hub.py)."""

from __future__ import annotations

import os

from embeddings.errors import first_line


def offline_by_choice() -> bool:
    """Whether the user asked for no network (HF_HUB_OFFLINE set to 1/true/yes/on): the cache alone."""
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


# the hub is https: its client takes HTTPS_PROXY or ALL_PROXY (HTTP_PROXY is for http:// URLs only)
PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


def hub_unreachable() -> str | None:
    """'cannot resolve huggingface.co (...)' when the hub's host name does not resolve, else None.

    Without a network huggingface_hub retries each request for 23 s (1+2+4+8+8) before it looks in its cache;
    one DNS lookup says the same at once. Behind a proxy the proxy resolves names, so nothing is asked.
    """
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if any(os.environ.get(name) for name in PROXY_VARIABLES):
        return None
    url = urlparse(constants.ENDPOINT)
    try:
        socket.getaddrinfo(url.hostname, url.port or 443)
    except (OSError, UnicodeError) as exc:
        return f"cannot resolve {url.hostname}: {exc}"
    return None


NETWORK_WORDS = ("connecterror", "connectionerror", "timeout", "name or service not known", "name resolution")


def network_error(exc: BaseException) -> str | None:
    """'ConnectError: [Errno -2] Name or service not known' when the failure was the network's (no network,
    DNS, refused, timed out: anywhere in the chain of causes diffusers and huggingface_hub wrap it in), else
    None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        said = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, ConnectionError | TimeoutError) or any(w in said.lower() for w in NETWORK_WORDS):
            return f"{type(exc).__name__}: {first_line(exc)}"[:160]
        exc = exc.__cause__ or exc.__context__
    return None
