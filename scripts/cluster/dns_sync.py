"""Cluster DNS records for the test cluster's real node, served by dnsmasq.

CoreDNS is not packaged in Debian 12, so the node runs dnsmasq (a real DNS server) with a
hosts file that this program keeps in step with the API server, with the records the
Kubernetes DNS specification defines (kubernetes/dns docs/specification.md) for what our
jobs use:

- `<service>.<ns>.svc.<domain>`: a Service's ClusterIP; for a headless Service, the
  addresses of its Endpoints (the endpoints controller already includes not-ready ones
  when the Service sets publishNotReadyAddresses, as the rank Service does);
- `<hostname>.<service>.<ns>.svc.<domain>`: an endpoint address that carries a hostname
  (a pod with spec.hostname and spec.subdomain = the Service's name), which is how a rank
  finds MASTER_ADDR.

Standard library only: it runs beside the cluster scripts, before any virtualenv exists.
Every change rewrites the file (write then rename) and sends dnsmasq SIGHUP, which makes it
re-read its hosts files.
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
from collections.abc import Iterable, Mapping
from typing import Any


def service_records(services: Iterable[Mapping[str, Any]], domain: str) -> list[tuple[str, str]]:
    """(address, name) of every Service with a ClusterIP."""
    out = []
    for svc in services:
        ip = svc.get("spec", {}).get("clusterIP")
        if ip and ip != "None":
            meta = svc["metadata"]
            out.append((ip, f"{meta['name']}.{meta['namespace']}.svc.{domain}"))
    return out


def endpoint_records(
    endpoints: Iterable[Mapping[str, Any]],
    headless: set[tuple[str, str]],
    domain: str,
) -> list[tuple[str, str]]:
    """(address, name) of every endpoint of a headless Service, and of the hostnames."""
    out = []
    for ep in endpoints:
        meta = ep["metadata"]
        key = (meta["namespace"], meta["name"])
        if key not in headless:
            continue
        service = f"{meta['name']}.{meta['namespace']}.svc.{domain}"
        for subset in ep.get("subsets") or []:
            for addr in subset.get("addresses") or []:
                out.append((addr["ip"], service))
                if addr.get("hostname"):
                    out.append((addr["ip"], f"{addr['hostname']}.{service}"))
    return out


def hosts_file(
    services: list[Mapping[str, Any]], endpoints: list[Mapping[str, Any]], domain: str
) -> str:
    """The hosts file for dnsmasq's --addn-hosts, sorted so equal states give equal text."""
    headless = {
        (s["metadata"]["namespace"], s["metadata"]["name"])
        for s in services
        if s.get("spec", {}).get("clusterIP") == "None"
    }
    records = set(service_records(services, domain))
    records |= set(endpoint_records(endpoints, headless, domain))
    return "".join(f"{ip} {name}\n" for ip, name in sorted(records, key=lambda r: (r[1], r[0])))


def _get(server: str, path: str, ctx: ssl.SSLContext, header: str) -> list[dict[str, Any]]:
    name, _, value = header.partition(":")
    req = urllib.request.Request(server + path, headers={name.strip(): value.strip()})
    with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
        return list(json.load(resp)["items"])


def _write_atomic(path: str, text: str) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--server", required=True)
    p.add_argument("--ca", required=True)
    p.add_argument("--token-file", required=True, help="a file holding 'Authorization: Bearer ...'")
    p.add_argument("--hosts", required=True)
    p.add_argument("--domain", default="cluster.local")
    p.add_argument("--dnsmasq-pid", required=True)
    p.add_argument("--interval", type=float, default=1.0)
    args = p.parse_args(argv)

    ctx = ssl.create_default_context(cafile=args.ca)
    with open(args.token_file, encoding="utf-8") as f:
        header = f.read().strip()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    current = None
    while True:
        try:
            text = hosts_file(
                _get(args.server, "/api/v1/services", ctx, header),
                _get(args.server, "/api/v1/endpoints", ctx, header),
                args.domain,
            )
        except OSError as exc:  # the API server restarting: try again next round
            print(f"dns-sync: {exc}", file=sys.stderr, flush=True)
            text = current
        if text is not None and text != current:
            _write_atomic(args.hosts, text)
            try:
                with open(args.dnsmasq_pid, encoding="utf-8") as f:
                    os.kill(int(f.read().strip()), signal.SIGHUP)
                current = text
            except (OSError, ValueError) as exc:  # dnsmasq not up yet: resend next round
                print(f"dns-sync: dnsmasq: {exc}", file=sys.stderr, flush=True)
        time.sleep(args.interval)


if __name__ == "__main__":
    sys.exit(main())
