"""`mnist-lab serve ckpt_path=PATH`: a local web page to try a model on a drawn digit, number or photo.

The page (serve_page.html, one file, nothing fetched from the internet) posts the drawing (a
PNG) or an uploaded photo to POST /api/read, which reads it as predict reads a file
(tools/predict.py: imageprep's preparation and segmentation, then the Predictor) and answers
JSON {name, text, digits: [{box, digit, confidence, top3, image_png_base64}], error}. A bad
upload (not an image, empty, no ink, too large) gets a 4xx with its error; the server stays up.
"""

from __future__ import annotations

import base64
import errno
import io
import json
import logging
import tempfile
import threading
import time
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import hydra
import numpy as np
from omegaconf import DictConfig

from mnist_lab import CONF_DIR
from mnist_lab.errors import ConfigError, UserError, user_errors
from mnist_lab.inference.imageprep import ImageError, read_grey
from mnist_lab.inference.predictor import Predictor
from mnist_lab.tools.predict import classify, image_record, load_predictor

log = logging.getLogger(__name__)
PAGE = "serve_page.html"


def decode(body: bytes, name: str) -> np.ndarray:
    """Uploaded image bytes -> (H, W) grey levels through read_grey, its errors naming the upload."""
    # read_grey reads files (EXIF rotation, transparency, its messages for damaged data): a
    # temporary file reuses all of it for the cost of one small write.
    with tempfile.TemporaryDirectory(prefix="mnist_lab_serve_") as tmp:
        path = Path(tmp) / "upload"
        path.write_bytes(body)
        try:
            return read_grey(path)
        except ImageError as e:
            raise ImageError(str(e).replace(str(path), name)) from e


def png_base64(image: np.ndarray) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def read_upload(body: bytes, name: str, predictor: Predictor, split: bool = True) -> dict[str, Any]:
    """The answer of POST /api/read: the digits of an uploaded image, read as predict reads a file.

    Args:
        body: the image file's bytes (PNG, JPEG, ... anything read_grey reads).
        name: what error messages call the upload.
        predictor: the model.
        split: cut the image into digits; False reads all its ink as one digit.
    """
    record = classify([image_record(name, partial(decode, body, name), split)], predictor)[0]
    digits = [
        {k: d[k] for k in ("box", "digit", "confidence", "top3")} | {"image_png_base64": png_base64(d["image"])}
        for d in record["digits"]
    ]
    return {"name": name, "text": record["text"], "digits": digits, "error": record["error"]}


class ReadServer(ThreadingHTTPServer):
    """The HTTP server, holding what every request needs: the model, the page and the upload limit.

    Args:
        address: (host, port); port 0 takes any free port (server_address tells which).
        predictor: the model.
        max_upload_bytes: larger request bodies are answered 413.
        split: cut images into digits (predict's `split`).
    """

    daemon_threads = True  # Ctrl-C does not wait for a browser's idle connection

    def __init__(self, address: tuple[str, int], predictor: Predictor, max_upload_bytes: int, split: bool) -> None:
        self.predictor, self.max_upload_bytes, self.split = predictor, max_upload_bytes, split
        self.page = resources.files("mnist_lab.tools").joinpath(PAGE).read_bytes()
        # One read at a time: torch already spreads one forward pass over every core, and a
        # large photo's preparation holds several float copies of it in memory.
        self.lock = threading.Lock()
        super().__init__(address, Handler)


class Handler(BaseHTTPRequestHandler):
    """GET / (the page), GET /api/info, POST /api/read (the image's bytes as the body)."""

    server: ReadServer
    timeout = 60  # seconds a stalled client may hold a connection

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path in ("/", "/index.html"):
            self._send(200, self.server.page, "text/html; charset=utf-8")
        elif path == "/api/info":
            info = {
                "model": str(self.server.predictor.path),
                "max_upload_bytes": self.server.max_upload_bytes,
                "split": self.server.split,
            }
            self._send_json(200, info)
        else:
            self._send_error(404, f"{path} is not here: the page is at /, the API at POST /api/read.")

    def do_POST(self) -> None:
        url = urlsplit(self.path)
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            self._send_error(411, "The request has no Content-Length: send the image file's bytes as the body.")
            return
        size, limit = int(length), self.server.max_upload_bytes
        if size > limit:
            self._drain(size)  # read, not refused unread: a client still sending would see a reset
            self._send_error(
                413,
                f"The upload is {size / 1e6:.1f} MB, over the {limit / 1e6:g} MB limit: send a smaller image "
                "(a digit needs no more than a few hundred pixels) or raise max_upload_mb.",
            )
            return
        body = self.rfile.read(size)
        if url.path != "/api/read":
            self._send_error(404, f"POST {url.path} is not an API: send images to POST /api/read.")
            return
        name = Path(parse_qs(url.query).get("name", ["the upload"])[0]).name[:200] or "the upload"
        if not body:
            self._send_error(400, "The request body is empty: POST the image file's bytes to /api/read.")
            return
        start = time.perf_counter()
        try:
            with self.server.lock:
                answer = read_upload(body, name, self.server.predictor, self.server.split)
        except Exception as e:  # a bug or a model failure: reported, and the server stays up
            log.exception("reading %s failed", name)
            self._send_error(500, f"Reading {name} failed: {type(e).__name__}: {e}")
            return
        ms = 1000 * (time.perf_counter() - start)
        log.info("read %s (%d bytes) as %r in %.0f ms", name, size, answer["text"] or answer["error"], ms)
        self._send_json(200 if answer["error"] is None else 400, answer)

    def _drain(self, size: int) -> None:
        while size > 0:
            chunk = self.rfile.read(min(size, 1 << 20))
            if not chunk:
                return
            size -= len(chunk)

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _send_json(self, status: int, answer: dict[str, Any]) -> None:
        self._send(status, json.dumps(answer).encode(), "application/json")

    def _send_error(self, status: int, message: str) -> None:
        self._send_json(status, {"name": None, "text": None, "digits": [], "error": message})

    def log_message(self, format: str, *args: Any) -> None:
        log.info("%s %s", self.address_string(), format % args)


def make_server(predictor: Predictor, host: str, port: int, max_upload_bytes: int, split: bool = True) -> ReadServer:
    """A ReadServer bound to (host, port), or a UserError saying why it cannot bind."""
    try:
        return ReadServer((host, port), predictor, max_upload_bytes, split)
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise UserError(
                f"port={port} on host={host} is already in use (another serve?). Pass another port, "
                "e.g. port=8766, or port=0 for any free one."
            ) from e
        raise UserError(f"Cannot listen on host={host} port={port}: {e}. Use host=127.0.0.1 and a free port.") from e


def serve(cfg: DictConfig) -> None:
    """Serve the page for the model of cfg.ckpt_path until Ctrl-C."""
    if cfg.max_upload_mb <= 0:
        raise ConfigError(f"max_upload_mb={cfg.max_upload_mb} must be > 0, e.g. max_upload_mb=10.")
    predictor = load_predictor(cfg.ckpt_path)
    server = make_server(predictor, cfg.host, cfg.port, int(cfg.max_upload_mb * 1e6), cfg.split)
    url = f"http://{cfg.host}:{server.server_port}/"  # server_port: the one port=0 was given
    print(f"Reading digits with {cfg.ckpt_path} at {url}  (Ctrl-C stops it)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("\nStopped.")
    finally:
        server.server_close()


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="serve")
def main(cfg: DictConfig) -> None:
    with user_errors():
        serve(cfg)


if __name__ == "__main__":
    main()
