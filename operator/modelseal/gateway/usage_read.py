"""``GET /usage`` on the gateway's metrics port: its counters, read-only, for the operator
(``modelseal.store.usage_report`` has the format and the token)."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from modelseal.audit.keyfile import read_hmac_key
from modelseal.gateway.core import Gateway
from modelseal.store.base import StoreUnavailable
from modelseal.store.usage_report import authorized, usage_read_token, usage_report

log = logging.getLogger("modelseal.gateway")

Handler = Callable[[web.Request], Awaitable[web.Response]]


def usage_handler(gw: Gateway) -> Handler:
    """The endpoint's handler. Without an audit key (``audit_hmac_key_file``) there is no
    token, and it answers 404: counters are never served to an unauthenticated caller."""
    key_file = gw.settings.audit_hmac_key_file
    token = usage_read_token(read_hmac_key(key_file)) if key_file is not None else None

    async def handle(request: web.Request) -> web.Response:
        if token is None:
            return web.Response(status=404, text="usage reading needs audit_hmac_key_file\n")
        if not authorized(token, request.headers.get("Authorization")):
            return web.Response(
                status=401, text="bearer token required\n", headers={"WWW-Authenticate": "Bearer"}
            )
        try:
            report = await usage_report(gw.store, gw.licenses_file.value, int(time.time() * 1000))
        except StoreUnavailable as exc:
            return web.Response(status=503, text=f"quota store: {exc}\n")
        return web.json_response(report, headers={"Cache-Control": "no-store"})

    return handle
