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
import os
import signal
import sys
from collections.abc import Iterable, Mapping
from typing import Any

from api_poll import add_api_args, api_from, poll, write_atomic


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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_api_args(p)
    p.add_argument("--hosts", required=True)
    p.add_argument("--domain", default="cluster.local")
    p.add_argument("--dnsmasq-pid", required=True)
    args = p.parse_args(argv)
    api = api_from(args)

    def render() -> str:
        return hosts_file(
            api.items("/api/v1/services"), api.items("/api/v1/endpoints"), args.domain
        )

    def publish(text: str) -> bool:
        write_atomic(args.hosts, text)
        try:
            with open(args.dnsmasq_pid, encoding="utf-8") as f:
                os.kill(int(f.read().strip()), signal.SIGHUP)
        except (OSError, ValueError) as exc:  # dnsmasq not up yet: resend next round
            print(f"dns-sync: dnsmasq: {exc}", file=sys.stderr, flush=True)
            return False
        return True

    poll("dns-sync", render, publish, args.interval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
