"""Concurrent clients against a live server: micro-batches form, each result equals the offline
recomputation of its recorded micro-batch, and the parameters end as they started; in request scope
(the default) a request's answer is the one it gets alone."""
import random
import threading

import httpx
import pytest

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


@pytest.mark.parametrize("scope", ["request", "batch"])
def test_concurrent_clients_match_their_recorded_micro_batches(checkpoint, data, scope):
    served = Recommender.load(checkpoint, scope=scope)  # its own copy: the server thread owns its model
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
    offline = Recommender.load(checkpoint, scope=scope)
    for record in records:
        assert record.users <= settings.max_batch_users or len(record.tags) == 1
        sent = [requests[index[repr(tag.model_dump())]] for tag in record.tags]
        users = [u for body in sent for u in body["users"]]
        recs = offline.recommend([(u["items"], u["timestamps"]) for u in users], [u["now"] for u in users],
                                 k=[b["k"] for b in sent for _ in b["users"]], align=record.align,
                                 exclude_seen=[b["exclude_seen"] for b in sent for _ in b["users"]],
                                 requests=[n for n, b in enumerate(sent) for _ in b["users"]])
        position = 0
        for body in sent:
            got = responses[index[repr(body)]]["results"]
            assert got == [r.to_dict() for r in recs[position:position + len(body["users"])]]
            position += len(body["users"])


def test_a_request_gets_the_same_answer_alone_and_among_concurrent_clients(checkpoint, data):
    """Request scope: 8 clients post other users at the same time as the probes; every probe's answer
    (top-k and scores) equals the answer it got alone on an idle server."""
    served = Recommender.load(checkpoint)  # scope "request", the serving default
    assert served.scope == "request" and served.aligns
    settings = ServeSettings(max_batch_users=16, max_wait_ms=30, record_batches=True)
    app = create_app(served, settings)
    histories, now = split_histories(served, data)

    def body(user, extra=0.0, users=1):
        chosen = [(user + 17 * j) % len(histories) for j in range(users)]
        return {"users": [{"items": list(histories[u].items), "timestamps": [float(t) for t in histories[u].timestamps],
                           "now": now[u] + extra} for u in chosen], "k": 10}

    probes = [body(u) for u in range(6)] + [body(40, users=3)]  # six single users, one body of three
    with live_server(app) as url:
        with httpx.Client(base_url=url, timeout=60) as client:
            alone = [client.post("/recommend", json=probe).json() for probe in probes]
        start = threading.Barrier(CLIENTS)
        answers: dict[int, list] = {n: [] for n in range(len(probes))}
        failures: list[str] = []

        def work(worker: int) -> None:
            rng = random.Random(worker)
            with httpx.Client(base_url=url, timeout=60) as client:
                start.wait()
                for round_ in range(6):
                    if (worker + round_) % 2 == 0:  # a probe, amid the other clients' traffic
                        number = rng.randrange(len(probes))
                        sent, key = probes[number], number
                    else:
                        sent, key = body(rng.randrange(len(histories)), rng.random() * 600, 1 + worker % 3), None
                    response = client.post("/recommend", json=sent)
                    if response.status_code != 200:
                        failures.append(f"{response.status_code} {response.text}")
                    elif key is not None:
                        answers[key].append(response.json())

        threads = [threading.Thread(target=work, args=(w,)) for w in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    assert not failures, failures
    assert sum(len(a) for a in answers.values()) == 24
    probe_reprs = {repr(p) for p in probes}
    shared = [r for r in app.state.batcher.records
              if len(r.tags) > 1 and any(repr(t.model_dump(include={"users", "k"})) in probe_reprs for t in r.tags)]
    assert shared, "no probe shared its micro-batch with another request"
    for number, got in answers.items():
        for answer in got:
            assert answer == alone[number]  # the same top-k and the same scores, bit for bit
