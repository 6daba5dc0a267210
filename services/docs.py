"""``/docs``: Swagger UI served by this service itself, so it renders under the service's
Content-Security-Policy (scripts and styles from this origin only, no inline script).

FastAPI's own page loads Swagger UI from a CDN and starts it with an inline script, both of which
the policy refuses (and a cluster without internet could not load it anyway). The files come from
the ``swagger-ui-bundle-v2`` package; the page and its start script are here.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles

ASSETS = "/docs-assets"

PAGE = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>selftrain API</title>
<link rel="stylesheet" href="{ASSETS}/swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="{ASSETS}/swagger-ui-bundle.js"></script>
<script src="/docs/start.js"></script>
</body>
</html>
"""

# The API's routes need the bearer token: "Authorize" in the page takes it.
START = """window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  presets: [SwaggerUIBundle.presets.apis],
  layout: "BaseLayout",
});
"""


def add_docs(app: FastAPI) -> None:
    """Serve Swagger UI at ``/docs`` (create the app with ``docs_url=None``)."""
    from swagger_ui_bundle import swagger_ui_path

    app.mount(ASSETS, StaticFiles(directory=swagger_ui_path), name="docs-assets")

    def docs() -> HTMLResponse:
        return HTMLResponse(PAGE)

    def start() -> Response:
        return Response(START, media_type="text/javascript")

    app.add_api_route("/docs", docs, methods=["GET"], include_in_schema=False)
    app.add_api_route("/docs/start.js", start, methods=["GET"], include_in_schema=False)
