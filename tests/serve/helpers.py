"""Helpers for the serving tests: test-split histories and a live uvicorn server."""
import contextlib
import socket
import threading
import time

from t2arec.serve import History


def split_histories(recommender, data, users=None):
    """Test-split inputs with raw ids and raw timestamps; ``now`` is the target's time."""
    users = range(len(data.items)) if users is None else users
    histories = [History([recommender.item_ids[i] for i in data.items[u][:-1]], data.times[u][:-1].tolist())
                 for u in users]
    return histories, [float(data.times[u][-1]) for u in users]


@contextlib.contextmanager
def live_server(app):
    """uvicorn serving ``app`` on an ephemeral loopback port in a background thread."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
