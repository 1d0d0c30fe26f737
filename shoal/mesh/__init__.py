"""The HTTP routing mesh: one process per node that routes HTTP by Host and TLS by SNI.

How it works (docs/mesh.md has the design note):

- The agent starts `python -m shoal.mesh` in the node's namespace (process.py, MeshProcess)
  and writes it a complete routing table as one JSON line whenever a labelled service's
  healthy tasks change (routes.py: routes_from_services builds the table from the labels
  shoal.http.host / shoal.http.port / shoal.https.host / shoal.https.port). The process swaps
  the table in one assignment (server.py) and answers; the next request sees it.
- HTTP (proxy.py): a request head is parsed and rewritten by a pure function (http1.py), a
  backend of its Host is taken round-robin, from a pool of kept-alive connections or a new
  connect that skips backends refusing it (pool.py); bodies are forwarded as they arrive,
  framed but never decoded (framing.py), with transport flow control. A 101 turns the pair
  into a pipe (WebSocket).
- TLS (tls.py): the ClientHello is read until complete (sni.py, pure, bounded), its SNI picks
  a backend, and the raw stream, ClientHello included, is piped there (tunnel.py).
- daemon.py is the process: uvloop, stdin/stdout control, SO_REUSEPORT workers, PDEATHSIG.
"""

from shoal.mesh.errors import HttpError, InvalidRoutes, MeshError
from shoal.mesh.process import MeshOptions, MeshProcess
from shoal.mesh.routes import RouteTable, ServiceRoutes, parse_routes, routes_from_services
from shoal.mesh.server import MeshConfig, MeshServer

__all__ = ["HttpError", "InvalidRoutes", "MeshConfig", "MeshError", "MeshOptions",
           "MeshProcess", "MeshServer", "RouteTable", "ServiceRoutes", "parse_routes",
           "routes_from_services"]
