"""appc image discovery (spec/discovery.md): from an app name and labels to the URLs of the
image, its signature and the signing keys.

The walk is pure: pages come from a ``fetch`` callable, so the same code serves the real HTTPS
client and the conformance vectors. ACI endpoints and public keys are looked up by two separate
walks up the name's path (a/b/c, a/b, a), sharing fetched pages.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from html.parser import HTMLParser

from kurmad.appc import AppString

# fetch(url) -> (HTTP status, body). Redirects are the fetcher's business (spec: follow all 3xx).
Fetch = Callable[[str], tuple[int, str]]

_META_ACI = "ac-discovery"
_META_KEYS = "ac-discovery-pubkeys"
_VARIABLE = re.compile(r"\{([^{}]*)\}")


@dataclass(frozen=True)
class ACIEndpoint:
    aci: str
    asc: str


@dataclass
class DiscoveryResult:
    aci_endpoints: list[ACIEndpoint] = field(default_factory=list)
    pubkeys: list[str] = field(default_factory=list)
    # Every URL fetched, in order, so callers can report where they looked.
    tried: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Meta:
    name: str
    prefix: str
    target: str


class _MetaCollector(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.metas: list[_Meta] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag != "meta":
            return
        values = {key: value or "" for key, value in attrs}
        name = values.get("name", "")
        parts = values.get("content", "").split()
        if name in (_META_ACI, _META_KEYS) and len(parts) == 2:
            self.metas.append(_Meta(name, parts[0], parts[1]))


def parse_meta_tags(html: str) -> list[_Meta]:
    collector = _MetaCollector()
    collector.feed(html)
    collector.close()
    return collector.metas


def discovery_url(prefix: str, insecure_http: bool = False) -> str:
    scheme = "http" if insecure_http else "https"
    return f"{scheme}://{prefix}?ac-discovery=1"


def _ancestors(name: str) -> list[str]:
    """``a/b/c`` -> ``[a/b/c, a/b, a]``."""
    parts = name.split("/")
    return ["/".join(parts[:n]) for n in range(len(parts), 0, -1)]


def render_template(template: str, app: AppString, ext: str) -> str | None:
    """Fill ``{name}``, ``{ext}``, ``{version}`` (default ``latest``) and any label; a template
    that names a variable the app does not have is not used (None)."""
    values = {**app.labels, "name": app.name, "ext": ext}
    values.setdefault("version", "latest")
    missing = False

    def substitute(match: re.Match[str]) -> str:
        nonlocal missing
        if match[1] not in values:
            missing = True
            return ""
        return values[match[1]]

    url = _VARIABLE.sub(substitute, template)
    return None if missing else url


class _PageCache:
    def __init__(self, fetch: Fetch, insecure_http: bool, tried: list[str]) -> None:
        self._fetch = fetch
        self._insecure = insecure_http
        self._pages: dict[str, list[_Meta]] = {}
        self._tried = tried

    def metas(self, prefix: str) -> list[_Meta]:
        if prefix not in self._pages:
            url = discovery_url(prefix, self._insecure)
            self._tried.append(url)
            self._pages[prefix] = self._load(url)
        return self._pages[prefix]

    def _load(self, url: str) -> list[_Meta]:
        try:
            status, body = self._fetch(url)
        except OSError:
            return []
        return parse_meta_tags(body) if 200 <= status < 300 else []


def discover(app: AppString, fetch: Fetch, insecure_http: bool = False) -> DiscoveryResult:
    result = DiscoveryResult()
    pages = _PageCache(fetch, insecure_http, result.tried)
    for prefix in _ancestors(app.name):
        result.aci_endpoints = _aci_endpoints(pages.metas(prefix), app)
        if result.aci_endpoints:
            break
    for prefix in _ancestors(app.name):
        result.pubkeys = _pubkeys(pages.metas(prefix), app)
        if result.pubkeys:
            break
    return result


def _aci_endpoints(metas: list[_Meta], app: AppString) -> list[ACIEndpoint]:
    endpoints = []
    for meta in metas:
        if meta.name != _META_ACI or not app.name.startswith(meta.prefix):
            continue
        aci = render_template(meta.target, app, "aci")
        asc = render_template(meta.target, app, "aci.asc")
        if aci is not None and asc is not None:
            endpoints.append(ACIEndpoint(aci, asc))
    return endpoints


def _pubkeys(metas: list[_Meta], app: AppString) -> list[str]:
    return [m.target for m in metas if m.name == _META_KEYS and app.name.startswith(m.prefix)]
