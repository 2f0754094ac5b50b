"""Whether this process can use the Hugging Face Hub, decided once and before anything loads.

A machine without network (a cluster node, an air-gapped box) that has not set HF_HUB_OFFLINE=1
would otherwise spend a minute in the Hub client's retries for every model and data set, then die
with a traceback. One TCP connect to the Hub endpoint tells us up front; when it fails, the HF
libraries are switched to offline mode for the rest of the process, so cached files still load
and a cache miss becomes validate's one-line error.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
from urllib.parse import urlparse

log = logging.getLogger(__name__)

_TRUE = {"1", "ON", "YES", "TRUE"}
_PROXIES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


@functools.lru_cache(maxsize=1)
def offline(timeout: float = 3.0) -> bool:
    """True when only local files (folders, the HF cache) can be used."""
    if os.environ.get("HF_HUB_OFFLINE", os.environ.get("TRANSFORMERS_OFFLINE", "")).upper() in _TRUE:
        return True
    if any(os.environ.get(v) for v in _PROXIES):
        return False  # the connection goes through the proxy: a direct probe proves nothing
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout).close()
        return False
    except OSError as err:
        log.warning("%s cannot be reached (%s): using local files and the HF cache only", constants.ENDPOINT, err)
    _go_offline()
    return True


def _go_offline() -> None:
    from huggingface_hub import constants

    os.environ["HF_HUB_OFFLINE"] = "1"  # for child processes (launchers, dataloader workers)
    constants.HF_HUB_OFFLINE = True  # huggingface_hub and transformers read this at call time
    try:
        import datasets.config

        datasets.config.HF_HUB_OFFLINE = True
    except ImportError:
        pass
