"""Concurrent clients against a live server: micro-batches form, each result equals the offline
recomputation of its recorded micro-batch, and the parameters end as they started."""
import threading

import httpx

from t2arec.checkpoint import load_checkpoint
from t2arec.serve import Recommender
from t2arec.serve.app import ServeSettings, create_app
from t2arec.serve.recommender import state_digest
from tests.serve.helpers import live_server, split_histories

CLIENTS = 8
REQUESTS_PER_CLIENT = 5


def make_requests(recommender, data):
    """Distinct requests (1-3 users each, a unique ``now`` offset) with mixed options."""
    histories, now = split_histories(recommender, data)
    requests = []
    for number in range(CLIENTS * REQUESTS_PER_CLIENT):
        users = [(number * 7 + j * 13) % len(histories) for j in range(1 + number % 3)]
        requests.append({
            "users": [{"items": list(histories[u].items), "timestamps": [float(t) for t in histories[u].timestamps],
                       "now": now[u] + number} for u in users],
            "k": 3 + number % 8, "align": number % 5 != 4, "exclude_seen": number % 4 == 1, "strict": False})
    return requests


def test_concurrent_clients_match_their_recorded_micro_batches(checkpoint, data):
    served = Recommender.load(checkpoint)  # its own copy: the server thread owns its model
    settings = ServeSettings(max_batch_users=8, max_wait_ms=30, record_batches=True)
    app = create_app(served, settings)
    requests = make_requests(served, data)
    expected_digest = state_digest(load_checkpoint(checkpoint)["state_dict"])
    responses: dict[int, dict] = {}
    failures: list[str] = []
    with live_server(app) as url:
        with httpx.Client(base_url=url, timeout=60) as client:
            probe = client.post("/recommend", json=requests[0]).json()
        start = threading.Barrier(CLIENTS)

        def work(worker: int) -> None:
            with httpx.Client(base_url=url, timeout=60) as client:
                start.wait()
                for number in range(worker, len(requests), CLIENTS):
                    response = client.post("/recommend", json=requests[number])
                    if response.status_code != 200:
                        failures.append(f"{number}: {response.status_code} {response.text}")
                    else:
                        responses[number] = response.json()

        threads = [threading.Thread(target=work, args=(w,)) for w in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        with httpx.Client(base_url=url, timeout=60) as client:
            health = client.get("/health").json()
            probe_after = client.post("/recommend", json=requests[0]).json()
    assert not failures, failures
    assert len(responses) == len(requests)
    assert health["parameters_sha256"] == expected_digest  # alignment never leaked into the served model
    assert probe_after == probe  # a request sent alone returns what it returned before the load

    records = app.state.batcher.records[1:-1]  # without the two probes
    assert sum(len(r.tags) for r in records) == len(requests)
    assert any(len(r.tags) > 1 for r in records), "no micro-batch held more than one request"
    assert {r.align for r in records} == {True, False}
    index = {repr(r): n for n, r in enumerate(requests)}
    offline = Recommender.load(checkpoint)
    for record in records:
        assert record.users <= settings.max_batch_users or len(record.tags) == 1
        sent = [requests[index[repr(tag.model_dump())]] for tag in record.tags]
        users = [u for body in sent for u in body["users"]]
        recs = offline.recommend([(u["items"], u["timestamps"]) for u in users], [u["now"] for u in users],
                                 k=[b["k"] for b in sent for _ in b["users"]], align=record.align,
                                 exclude_seen=[b["exclude_seen"] for b in sent for _ in b["users"]])
        position = 0
        for body in sent:
            got = responses[index[repr(body)]]["results"]
            assert got == [r.to_dict() for r in recs[position:position + len(body["users"])]]
            position += len(body["users"])
