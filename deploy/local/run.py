"""`make run`: the whole Mall Circle suite on this machine, in the foreground.

1. PostgreSQL and NATS (JetStream): the servers at DATABASE_URL / NATS_URL when given, else
   embedded ones (PyPI wheels) whose data stays in the run dir between runs.
2. One database per backend service (member, points, parking, coupons), created if missing
   on that server and migrated with ``python -m <service> migrate``.
3. Every service under supervisord (``python -m <service> all``; the gateway ``serve``): one
   console for all their output, crashed services restarted.
4. Once the gateway's /readyz and every backend's gRPC health say so: the demo mall is seeded
   (idempotent) and a banner prints the URLs and curl commands to try.
5. Ctrl-C or SIGTERM stops supervisord (which stops the services), then the embedded servers;
   exit code 0.  The next run reuses the data.

Environment (all optional):

  DATABASE_URL            admin URL of a PostgreSQL server to use instead of the embedded one
                          (a database per service is created there when missing)
  NATS_URL                a NATS server with JetStream to use instead of the embedded one
  MALL_RUN_DIR            state folder (default ``.run`` in the repo): postgres/, nats/,
                          supervisord.conf, supervisord.log, the supervisorctl socket
  GATEWAY_PORT            gateway HTTP port (8080)
  MEMBER_GRPC_PORT        member gRPC port (50061); every backend has ``<NAME>_GRPC_PORT``
  POINTS_GRPC_PORT        points gRPC port (50062)
  PARKING_GRPC_PORT       parking gRPC port (50063)
  COUPONS_GRPC_PORT       coupons gRPC port (50064)
  MALL_FREE_PORTS=1       free ports instead of the defaults above for whatever is not set
                          (a second stack beside the first, the tests); the banner shows them
  EMBEDDED_POSTGRES_PORT  port of the embedded PostgreSQL (default: a free one)
  EMBEDDED_NATS_PORT      port of the embedded nats-server (default: a free one)
  LOG_LEVEL               the services' log level (info)
  MALL_READY_TIMEOUT_S    how long to wait for the stack to be ready (60)

While it runs: ``.venv/bin/supervisorctl -c .run/supervisord.conf status`` (or restart, pid,
tail ...).  The code is the ``deploy.local`` package beside this file.
"""

import runpy
import sys
from pathlib import Path

# Run as a script, this folder heads sys.path and its modules would shadow top-level names:
# import them as the deploy.local package from the repo root instead.
sys.path[0] = str(Path(__file__).resolve().parents[2])
try:
    runpy.run_module("deploy.local", run_name="__main__", alter_sys=True)
except KeyboardInterrupt:  # Ctrl-C while still importing: nothing was started yet
    raise SystemExit(0) from None
