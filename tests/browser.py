"""A real browser for the report tests: Debian's Chromium, headless, driven through the Chrome
DevTools Protocol (a websocket), so a test sees every failed request, script error and console
error of a page, its width, and keeps a screenshot (test-artifacts/browser/<name>.png).

`ensure_chromium()` installs Debian's `chromium` package (`make browser`) when it is missing."""
from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts" / "browser"
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--remote-debugging-port=0", "--window-size=1400,1000", "about:blank"]


def ensure_chromium() -> str:
    found = shutil.which("chromium")
    if found:
        return found
    r = subprocess.run(["make", "-C", str(REPO), "browser"], capture_output=True, text=True, timeout=900)
    found = shutil.which("chromium")
    assert found, f"make browser did not install chromium: {r.stdout[-1500:]}{r.stderr[-1500:]}"
    return found


class Page(dict):
    """What loading one page gave: failed requests, script errors, console errors, width, title."""


def load(path: Path, name: str, timeout: float = 60.0) -> Page:
    """Open file `path` in headless Chromium at 1400 px, wait for its load event, and report."""
    chromium = ensure_chromium()
    with tempfile.TemporaryDirectory(prefix="chromium-", ignore_cleanup_errors=True) as profile:
        proc = subprocess.Popen([chromium, f"--user-data-dir={profile}", *FLAGS], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            port_file, deadline = Path(profile) / "DevToolsActivePort", time.monotonic() + timeout
            while not port_file.exists() or not port_file.read_text().strip():
                assert proc.poll() is None, f"chromium exited with {proc.returncode}"
                assert time.monotonic() < deadline, "chromium did not open its DevTools port"
                time.sleep(0.1)
            port = int(port_file.read_text().split()[0])
            targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10).read())
            ws = next(t["webSocketDebuggerUrl"] for t in targets if t.get("type") == "page")
            return asyncio.run(asyncio.wait_for(_drive(ws, path.resolve().as_uri(), name), timeout))
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)         # the browser and its renderers
            proc.wait(10)


async def _drive(ws_url: str, url: str, name: str) -> Page:
    import websockets

    page = Page(url=url, failed=[], exceptions=[], console_errors=[], requests=[])
    async with websockets.connect(ws_url, max_size=64 * 2**20) as ws:
        ids, loaded = iter(range(1, 10**6)), asyncio.Event()
        replies: dict[int, asyncio.Future] = {}

        async def reader():
            async for raw in ws:
                msg = json.loads(raw)
                if "id" in msg and msg["id"] in replies:
                    replies.pop(msg["id"]).set_result(msg)
                    continue
                method, p = msg.get("method"), msg.get("params") or {}
                if method == "Network.requestWillBeSent":
                    page["requests"].append(p["request"]["url"][:120])
                elif method == "Network.loadingFailed":
                    page["failed"].append(f"{p.get('errorText')} ({p.get('type')})")
                elif method == "Runtime.exceptionThrown":
                    page["exceptions"].append(p["exceptionDetails"].get("text"))
                elif method == "Runtime.consoleAPICalled" and p.get("type") == "error":
                    page["console_errors"].append(str(p.get("args"))[:300])
                elif method == "Log.entryAdded" and p["entry"].get("level") == "error":
                    page["console_errors"].append(p["entry"].get("text", "")[:300])
                elif method == "Page.loadEventFired":
                    loaded.set()

        async def call(method: str, **params) -> dict:
            i = next(ids)
            replies[i] = asyncio.get_running_loop().create_future()
            await ws.send(json.dumps({"id": i, "method": method, "params": params}))
            reply = await replies[i]
            assert "error" not in reply, (method, reply["error"])
            return reply.get("result") or {}

        task = asyncio.create_task(reader())
        for domain in ("Network", "Runtime", "Log", "Page"):
            await call(f"{domain}.enable")
        await call("Page.navigate", url=url)
        await loaded.wait()
        await asyncio.sleep(0.3)            # late errors, lazy images
        ev = await call("Runtime.evaluate", returnByValue=True, expression=(
            "JSON.stringify({width: document.documentElement.scrollWidth, title: document.title, "
            "text: document.body.innerText.length, images: [...document.images].filter(i => !i.complete || "
            "i.naturalWidth === 0).length})"))
        page.update(json.loads(ev["result"]["value"]))
        shot = await call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page["screenshot"] = ARTIFACTS / f"{name}.png"
        page["screenshot"].write_bytes(base64.b64decode(shot["data"]))
        task.cancel()
    return page


def check(page: Page, max_width: int = 1400) -> None:
    """A report page loads whole: no failed request, no script error, no console error, no broken
    image, nothing wider than `max_width` px, some text, and a screenshot kept."""
    assert not page["failed"] and not page["exceptions"] and not page["console_errors"], page
    assert page["images"] == 0, page
    assert page["width"] <= max_width, f"{page['url']}: {page['width']} px wide (readable at {max_width} px)"
    assert page["text"] > 200 and page["title"], page
    assert page["screenshot"].stat().st_size > 5000, page["screenshot"]


def check_lake_pages(pages: dict[str, str], tmp: Path) -> dict[str, Page]:
    """Each report page of the lake ({name: uri}) copied to a file as a user downloads it, opened in
    the browser and checked (`check`); the screenshots are kept under test-artifacts/browser/."""
    from pipelines.core import storage

    out = {}
    for name, uri in pages.items():
        f = tmp / f"{name}.html"
        f.write_bytes(storage.read_bytes(uri))
        out[name] = load(f, name)
        check(out[name])
    return out
