"""The operator's console: alerts and their review state in SQLite, a JSON + Server-Sent Events API, and a page.

    store = ConsoleStore("runs/demo/console.db")         # alerts, reviews (ack / dismiss), camera states
    RunFollower(store, "runs/demo").catch_up()           # fed from a run's folder (alerts/verdicts/health.jsonl)
    server = ConsoleServer(store, port=8080, thumbnail_dirs=["runs/demo/thumbnails"]).start()
    print(server.url)                                    # the page at /, the API under /api/ (openapi.json)

`clipwatch console RUN_DIR` does this for a finished or running pipeline's folder, following its files as they
grow; a pipeline config's ``console`` section makes the sink feed and serve one itself (`LiveConsole`).
"""

from pipeline.console.errors import ApiError, ConsoleError
from pipeline.console.events import EventHub
from pipeline.console.follow import RunFollower
from pipeline.console.server import ConsoleServer
from pipeline.console.store import ConsoleStore, camera_of

__all__ = ["ApiError", "ConsoleError", "ConsoleServer", "ConsoleStore", "EventHub", "RunFollower", "camera_of"]
