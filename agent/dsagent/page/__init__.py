"""The agent's live page at `/`: static files (HTML, JS, the vendored uPlot) and its update stream.

Why a package: the page's files ship as package data beside the code that serves them (no CDN, no build
step); `routes` holds the few HTTP routes, `static/` the files.
"""

from dsagent.page.routes import build_page_router

__all__ = ["build_page_router"]
