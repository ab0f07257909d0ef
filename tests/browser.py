"""Headless Chromium driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: no port, no websocket
library): load a page, collect console errors and exceptions, evaluate JavaScript, take a screenshot.

    python tests/browser.py PAGE.html SHOT.png [--width 1280 --height 2400]   # a screenshot (make screenshot)

``find()`` looks for ``$BAYESTREX_CHROMIUM``, then ``chromium`` / ``chromium-browser`` / ``google-chrome`` on PATH
(``make browser`` installs Debian's ``chromium``).
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def find() -> str | None:
    """The Chromium executable, or None."""
    explicit = os.environ.get("BAYESTREX_CHROMIUM")
    if explicit:
        return explicit if Path(explicit).is_file() else None
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


class Browser:
    """One headless Chromium with one page; ``errors`` collects console errors, uncaught exceptions and failed
    loads (each a string). Use as a context manager."""

    def __init__(self, executable: str, *, width: int = 1280, height: int = 900, timeout: float = 60):
        self.timeout, self._id, self.errors, self._events = timeout, 0, [], []
        self._profile = tempfile.TemporaryDirectory(prefix="bayestrex-chromium-")
        cmd_r, cmd_w = os.pipe()  # we write commands -> its fd 3
        out_r, out_w = os.pipe()  # it writes replies on fd 4 -> we read
        low = (cmd_r, out_w)

        args = [executable, "--headless=new", "--remote-debugging-pipe", "--no-sandbox", "--disable-gpu",
                "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--mute-audio",
                "--disable-dev-shm-usage", f"--user-data-dir={self._profile.name}",
                f"--window-size={width},{height}", "about:blank"]
        # the pipe must be fds 3 and 4 in chromium: a shell moves them there (from fds above 4, so none is clobbered)
        cmd_r, out_w = (fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (cmd_r, out_w))
        shell = ["/bin/bash", "-c", f'exec "$@" 3<&{cmd_r} 4>&{out_w} {cmd_r}<&- {out_w}>&-', "bash"]
        self.proc = subprocess.Popen(shell + args, pass_fds=(cmd_r, out_w), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for fd in (cmd_r, out_w, *low):
            os.close(fd)
        self._w, self._r, self._buf = os.fdopen(cmd_w, "wb"), out_r, b""
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable", session=True)
        self.call("Emulation.setDeviceMetricsOverride", session=True, width=width, height=height,
                  deviceScaleFactor=1, mobile=False)

    # -- the protocol --------------------------------------------------------------------------------------------
    def _read(self) -> dict:
        deadline = time.monotonic() + self.timeout
        while b"\0" not in self._buf:
            if time.monotonic() > deadline:
                raise TimeoutError("chromium did not answer")
            chunk = os.read(self._r, 1 << 16)
            if not chunk:
                err = self.proc.stderr.read().decode(errors="replace")[-2000:] if self.proc.stderr else ""
                raise RuntimeError(f"chromium closed the DevTools pipe: {err}")
            self._buf += chunk
        msg, self._buf = self._buf.split(b"\0", 1)
        return json.loads(msg)

    def _note(self, msg: dict) -> None:
        method, p = msg.get("method"), msg.get("params", {})
        self._events.append(method)
        if method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            self.errors.append("console.error: " + " ".join(str(a.get("value", a.get("description", "")))
                                                            for a in p.get("args", [])))
        elif method == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            self.errors.append("exception: " + d.get("exception", {}).get("description", d.get("text", "")))
        elif method == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            self.errors.append("log: " + p["entry"].get("text", ""))

    def call(self, method: str, *, session: bool = False, **params) -> dict:
        """Send one command and return its result (events that arrive meanwhile are noted)."""
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params}
        if session:
            msg["sessionId"] = self.session
        self._w.write(json.dumps(msg).encode() + b"\0")
        self._w.flush()
        while True:
            reply = self._read()
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self._note(reply)

    def wait_for(self, event: str) -> None:
        while event not in self._events:
            self._note(self._read())

    # -- what the tests use ----------------------------------------------------------------------------------------
    def open(self, path) -> None:
        """Load a local file and wait for its load event."""
        self.call("Page.navigate", session=True, url=Path(path).resolve().as_uri())
        self.wait_for("Page.loadEventFired")

    def evaluate(self, expression: str):
        """The value of a JavaScript expression (JSON-serialisable), awaiting a promise."""
        out = self.call("Runtime.evaluate", session=True, expression=expression, returnByValue=True,
                        awaitPromise=True)
        if "exceptionDetails" in out:
            raise RuntimeError(f"JavaScript error: {out['exceptionDetails']}")
        return out["result"].get("value")

    def screenshot(self, path, *, full_page: bool = False) -> None:
        params = dict(format="png")
        if full_page:
            size = self.evaluate("[document.documentElement.scrollWidth, document.documentElement.scrollHeight]")
            params["clip"] = dict(x=0, y=0, width=size[0], height=size[1], scale=1)
            params["captureBeyondViewport"] = True
        data = self.call("Page.captureScreenshot", session=True, **params)["data"]
        Path(path).write_bytes(base64.b64decode(data))

    def close(self) -> None:
        try:
            self.call("Browser.close")
        except (RuntimeError, OSError, TimeoutError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._w.close()
        os.close(self._r)
        self._profile.cleanup()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(description="Screenshot a page with headless Chromium.")
    p.add_argument("page")
    p.add_argument("out")
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=2400)
    a = p.parse_args(argv)
    exe = find()
    if exe is None:
        print("chromium not found: run `make browser` (or set BAYESTREX_CHROMIUM)", file=sys.stderr)
        return 2
    with Browser(exe, width=a.width, height=a.height) as b:
        b.open(a.page)
        b.screenshot(a.out)
        if b.errors:
            print("\n".join(b.errors), file=sys.stderr)
            return 1
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
