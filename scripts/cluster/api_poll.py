"""Polling the test cluster's API server with the standard library only.

The cluster scripts' helpers (dns_sync.py, scrape_targets.py) run beside the cluster before
any virtualenv exists: they list objects every second and rewrite a file when it changes.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import ssl
import sys
import time
import urllib.request
from collections.abc import Callable
from typing import Any


class Api:
    """GET requests with the admin's bearer token ('Authorization: Bearer ...' in a file)."""

    def __init__(self, server: str, ca: str, token_file: str) -> None:
        self.server = server
        self.ctx = ssl.create_default_context(cafile=ca)
        with open(token_file, encoding="utf-8") as f:
            name, _, value = f.read().strip().partition(":")
        self.headers = {name.strip(): value.strip()}

    def items(self, path: str) -> list[dict[str, Any]]:
        req = urllib.request.Request(self.server + path, headers=self.headers)
        with urllib.request.urlopen(req, context=self.ctx, timeout=10) as resp:
            return list(json.load(resp)["items"])


def add_api_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", required=True)
    parser.add_argument("--ca", required=True)
    parser.add_argument(
        "--token-file", required=True, help="a file holding 'Authorization: Bearer ...'"
    )
    parser.add_argument("--interval", type=float, default=1.0)


def api_from(args: argparse.Namespace) -> Api:
    return Api(args.server, args.ca, args.token_file)


def write_atomic(path: str, text: str) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def poll(
    name: str,
    render: Callable[[], str],
    publish: Callable[[str], bool],
    interval: float,
) -> None:
    """Forever: render the file's text; when it changed, publish it (False: try again)."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    current = None
    while True:
        try:
            text = render()
        except OSError as exc:  # the API server restarting: try again next round
            print(f"{name}: {exc}", file=sys.stderr, flush=True)
            text = current
        if text is not None and text != current and publish(text):
            current = text
        time.sleep(interval)
