"""Alerts: every alert is stored with the day's record and, when a webhook is configured
(`monitor.webhook_url` or FRAUDOPS_ALERT_WEBHOOK), POSTed to it. A channel that is down is
recorded, never fatal: the stored record is the source of truth."""
from __future__ import annotations

import json
import logging
import os
import urllib.request

log = logging.getLogger("pipelines.alerts")
WEBHOOK_ENV = "FRAUDOPS_ALERT_WEBHOOK"


def webhook_url(configured: str | None) -> str | None:
    """The webhook to POST alerts to: the environment wins over params.yaml."""
    return os.environ.get(WEBHOOK_ENV) or configured


def send_webhook(url: str, payload: dict, timeout: float) -> dict:
    req = urllib.request.Request(url, data=json.dumps(payload, default=str).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return {"url": url, "delivered": 200 <= r.status < 300, "status": r.status}
    except Exception as exc:     # an alert channel being down must not hide the stored record
        log.warning("alert webhook %s failed: %s", url, exc)
        return {"url": url, "delivered": False, "error": f"{type(exc).__name__}: {str(exc)[:200]}"}
