"""`rlm view`: a local, read-only web server for the trajectory explorer.

The app itself is built from `visualizer/` (TypeScript, React) into `rlm/viewer/static/`, which
ships inside the package: serving it needs no Node.js.
"""

from rlm.viewer.server import DEFAULT_PORT, ViewerServer, make_server, serve

__all__ = ["DEFAULT_PORT", "ViewerServer", "make_server", "serve"]
