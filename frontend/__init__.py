"""The promptdex web page: static HTML, CSS and JavaScript modules (no build step), served by search_api."""

from pathlib import Path

STATIC_DIR = Path(__file__).resolve().parent
INDEX_HTML = STATIC_DIR / "index.html"
