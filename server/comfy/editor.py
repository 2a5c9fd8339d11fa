"""Serving ComfyUI's node editor (the `comfyui-frontend-package` static files) and signing in to it.

The editor is not part of Loom: `pip install -e ".[ui]"` installs it (GPL-3.0) and this
module serves its files from the installed package, never from a copy in this repository.
Without it, `/` answers with a short page that says how to install it.

Editor pages get their own Content-Security-Policy (scripts, styles and connections from
this origin only, no framing) in place of the API's deny-all one.

With a token set, a browser signs in once at `/login` (a form that takes the token); the
answer sets an HttpOnly, SameSite=Strict cookie that the guard accepts like the
Authorization header, so the editor's requests and its websocket carry it without
scripts ever seeing it.

`/loom/editor.js` is an editor extension: it replaces the editor's default workflow
(whose models Loom does not have) with Loom's txt2img graph on the shipped model, and
opens PNGs that carry only Loom's graph (saved by `loom run` or `/v1`) as workflows.
"""
from __future__ import annotations

import html
import importlib.util
import mimetypes
from pathlib import Path

from fastapi.responses import FileResponse, HTMLResponse, Response

from engine.paths import UnsafePath, contained

from ..security import TOKEN_COOKIE

EDITOR_PACKAGE = "comfyui_frontend_package"
EDITOR_CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline' 'wasm-unsafe-eval' blob:; "
              "style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; font-src 'self' data:; "
              "connect-src 'self' blob: data:; worker-src 'self' blob:; media-src 'self' blob: data:; "
              "frame-ancestors 'none'; base-uri 'self'; form-action 'self'")
PAGE_CSP = "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"
EDITOR_HEADERS = {"content-security-policy": EDITOR_CSP, "cache-control": "no-cache"}

mimetypes.add_type("text/javascript", ".js")
mimetypes.add_type("text/javascript", ".mjs")
mimetypes.add_type("application/wasm", ".wasm")

EXTENSION_JS = """\
// Loom: open Loom's default workflow instead of the editor's own, whose models are not here.
import { app } from "../scripts/app.js";

function signature(graph) {
  return JSON.stringify((graph?.nodes ?? []).map((n) => [n.type, n.widgets_values ?? []]).sort());
}

// A PNG that `loom run` or /v1 saved carries Loom's graph (tEXt "loom") but no ComfyUI
// workflow: the server draws that graph as one, so dropping it on the canvas opens it too.
function pngTexts(bytes) {
  const view = new DataView(bytes.buffer);
  const texts = {};
  for (let pos = 8; pos + 8 <= bytes.length; ) {
    const length = view.getUint32(pos);
    const type = String.fromCharCode(...bytes.subarray(pos + 4, pos + 8));
    if (type === "IEND") break;
    if (type === "tEXt") {
      const data = bytes.subarray(pos + 8, pos + 8 + length);
      const zero = data.indexOf(0);
      texts[new TextDecoder("latin1").decode(data.subarray(0, zero))] = new TextDecoder().decode(data.subarray(zero + 1));
    }
    pos += 12 + length;
  }
  return texts;
}

async function loomWorkflowOf(file) {
  if (!(file instanceof Blob) || file.type !== "image/png") return null;
  const texts = pngTexts(new Uint8Array(await file.arrayBuffer()));
  if (texts.workflow || texts.prompt || !texts.loom) return null;
  const response = await fetch("api/loom/workflow", {method: "POST", body: texts.loom,
                                                     headers: {"content-type": "application/json"}});
  return response.ok ? response.json() : null;
}

const handleFile = app.handleFile.bind(app);
app.handleFile = async (file, ...rest) => {
  const workflow = await loomWorkflowOf(file);
  return workflow ? app.loadGraphData(workflow, true, true, file.name) : handleFile(file, ...rest);
};

app.registerExtension({
  name: "loom.defaultWorkflow",
  async setup() {
    const response = await fetch("api/loom/default_workflow");
    if (!response.ok) return;
    const workflow = await response.json();
    const defaults = window.comfyAPI?.defaultGraph?.defaultGraph;
    const current = app.graph.serialize();
    const untouched = !current.nodes.length || (defaults && signature(current) === signature(defaults));
    if (defaults) {
      // "Load default" from the menu gives Loom's graph too.
      for (const key of Object.keys(defaults)) delete defaults[key];
      Object.assign(defaults, structuredClone(workflow));
    }
    if (untouched) await app.loadGraphData(workflow);
  },
});
"""


def editor_root() -> Path | None:
    """The installed editor's static folder, or None when the `ui` extra is not installed."""
    spec = importlib.util.find_spec(EDITOR_PACKAGE)
    if spec is None or spec.origin is None:
        return None
    root = Path(spec.origin).parent / "static"
    return root if (root / "index.html").is_file() else None


def editor_file(root: Path, name: str) -> Response | None:
    """A static file of the editor (contained in its folder), or None."""
    try:
        path = contained(root, name or "index.html")
    except UnsafePath:
        return None
    if path.is_dir():
        path = path / "index.html"
    if not path.is_file():
        return None
    media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return FileResponse(path, media_type=media_type, headers=EDITOR_HEADERS)


__all__ = ["TOKEN_COOKIE", "editor_root", "editor_file", "extension_script", "install_page",
           "login_page"]


def extension_script() -> Response:
    return Response(EXTENSION_JS, media_type="text/javascript", headers=EDITOR_HEADERS)


def install_page() -> HTMLResponse:
    body = """<!doctype html><html><head><meta charset="utf-8"><title>Loom</title>
<style>body{font:16px/1.5 system-ui,sans-serif;max-width:42em;margin:3em auto;padding:0 1em}
code{background:#eee;padding:.1em .3em}</style></head><body>
<h1>Loom is running</h1>
<p>The node editor is not installed. It is ComfyUI's web editor, published on PyPI as
<code>comfyui-frontend-package</code> (GPL-3.0) and installed separately from Loom:</p>
<p><code>pip install -e ".[ui]"</code> (or <code>pip install comfyui-frontend-package</code>),
then restart <code>loom serve</code>.</p>
<p>The HTTP API works without it: <code>/v1/runs</code>, and ComfyUI's <code>/prompt</code>,
<code>/history</code>, <code>/ws</code>.</p></body></html>"""
    return HTMLResponse(body, headers={"content-security-policy": PAGE_CSP})


def login_page(message: str = "", status_code: int = 200) -> HTMLResponse:
    note = f"<p><strong>{html.escape(message)}</strong></p>" if message else ""
    body = f"""<!doctype html><html><head><meta charset="utf-8"><title>Loom: sign in</title>
<style>body{{font:16px/1.5 system-ui,sans-serif;max-width:30em;margin:3em auto;padding:0 1em}}
input{{font:inherit;width:100%;margin:.3em 0}}</style></head><body>
<h1>Sign in to Loom</h1>{note}
<p>This server needs its access token (the <code>--token</code> it was started with).</p>
<form method="post" action="login"><input type="password" name="token" autocomplete="current-password"
 autofocus required><input type="submit" value="Sign in"></form></body></html>"""
    return HTMLResponse(body, status_code=status_code, headers={"content-security-policy": PAGE_CSP})
