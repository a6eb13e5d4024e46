"""The benchmark documents (a light HTML page; small, medium, large menus) and the local image server."""

from __future__ import annotations

import struct
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

IMAGE_COUNT = 10


def make_png(width: int, height: int, seed: int) -> bytes:
    """A small gradient PNG, no imaging library needed."""
    rows = bytearray()
    for y in range(height):
        rows.append(0)
        for x in range(width):
            rows += bytes(((x * 255 // width + seed * 37) % 256, (y * 255 // height) % 256, (seed * 91) % 256))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(bytes(rows), 6)) + chunk(b"IEND", b""))


class ImageServer:
    """A ThreadingHTTPServer on 127.0.0.1 serving /img/<n>.png."""

    def __init__(self, count: int = IMAGE_COUNT) -> None:
        self.images = {f"/img/{i}.png": make_png(240, 160, i) for i in range(count)}
        images = self.images

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                body = images.get(self.path.split("?", 1)[0])
                if body is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, name="bench-images", daemon=True)

    def __enter__(self) -> ImageServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()

    def url(self, i: int) -> str:
        return f"http://127.0.0.1:{self.port}/img/{i % len(self.images)}.png"


_DESCRIPTIONS = [
    "Slow-braised, with seasonal vegetables and a glossy jus",
    "Hand-rolled, brown butter, sage, toasted hazelnuts, aged parmesan",
    "Charred over oak, herb salsa verde, lemon",
    "Our house classic, served with pickles and warm bread",
]


def _menu(name: str, sections: int, items: int, image_base: str | None = None, images: int = 0) -> dict[str, Any]:
    secs = []
    n = 0
    for s in range(sections):
        its = []
        for i in range(items):
            item: dict[str, Any] = {
                "name": f"Dish {s + 1}.{i + 1}",
                "description": _DESCRIPTIONS[(s + i) % len(_DESCRIPTIONS)],
                "price": f"{9 + (s * 7 + i * 3) % 30}.50",
                "currency": "USD",
            }
            if (s + i) % 3 == 0:
                item["dietary"] = ["vegetarian"]
            if image_base is not None and n < images:
                item["image_url"] = f"{image_base}/img/{n % IMAGE_COUNT}.png?i={n}"
            n += 1
            its.append(item)
        secs.append({"title": f"Section {s + 1}", "items": its})
    return {
        "restaurant": {"name": name, "tagline": "Benchmark menu", "address": "1 Bench St", "phone": "+1 555 0100"},
        "theme": {"accent_color": "#7a1f3d", "font": "serif"},
        "sections": secs,
        "footer": "Prices include service.",
    }


LIGHT_ITEMS = 24


def light_html(items: int = LIGHT_ITEMS) -> str:
    """A plain HTML page of `items` dishes, no images, no script (issue 26: the document a user
    tried, which Chromium prints in tens of ms, so the fixed cost per job shows)."""
    rows = "".join(
        f"<li><b>Dish {i + 1}</b> <i>{_DESCRIPTIONS[i % len(_DESCRIPTIONS)]}</i> <span>{9 + i % 30}.50</span></li>"
        for i in range(items))
    return ("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Light menu</title>"
            "<style>body{font-family:serif;margin:2em}li{margin:.3em 0}span{float:right}</style></head>"
            f"<body><h1>Light menu</h1><ul>{rows}</ul></body></html>")


def documents(image_port: int) -> dict[str, dict[str, Any]]:
    """name -> export payload (PDF): light is plain HTML, the others are menus."""
    base = f"http://127.0.0.1:{image_port}"
    return {
        "light": {"source": {"kind": "html", "html": light_html()}},
        "small": {"source": {"kind": "menu", "template": "classic", "menu": _menu("Small Bistro", 3, 4)}},
        "medium": {"source": {"kind": "menu", "template": "classic",
                              "menu": _menu("Medium Brasserie", 5, 8, image_base=base, images=10)}},
        "large": {"source": {"kind": "menu", "template": "classic", "menu": _menu("Large Grand Cafe", 20, 14)}},
    }


def payload_html(payload: dict[str, Any]) -> str:
    """The HTML the child renders for this payload (as is, or render_menu_html)."""
    from render_child.templates import render_menu_html
    from shared.payload import HtmlSource, parse_payload

    parsed = parse_payload(payload, "pdf")
    source: Any = parsed.source
    if isinstance(source, HtmlSource):
        return source.html
    return render_menu_html(source.menu, source.template)
