"""Policy server and light client over loopback: round trip, robustness, concurrency, no torch on the client."""

import subprocess
import sys
import threading
import urllib.request

import msgpack
import numpy as np
import pytest

from handvla.robot.client import ActionChunkBroker, PolicyClient, PolicyError
from handvla.robot.protocol import ProtocolError, pack, unpack
from handvla.robot.server import PolicyServer


class LinearPolicy:
    """A real, checkable policy: actions[k] = W @ state + k."""

    def __init__(self, state_dim=13, action_dim=13, chunk=16):
        rng = np.random.default_rng(0)
        self.W = rng.normal(size=(action_dim, state_dim)).astype(np.float32)
        self.chunk = chunk

    def metadata(self):
        return {"chunk_size": self.chunk, "action_dim": self.W.shape[0], "observation": {
            "state": {"shape": [self.W.shape[1]], "dtype": "float32"},
            "image": {"shape": [-1, -1, 3], "dtype": "uint8"}}}

    def expected(self, state):
        return (self.W @ state)[None] + np.arange(self.chunk, dtype=np.float32)[:, None]

    def infer(self, obs):
        return self.expected(obs["state"])


@pytest.fixture(scope="module")
def server():
    policy = LinearPolicy()
    srv = PolicyServer(policy, port=0)
    port = srv.start_in_thread()
    yield policy, f"ws://127.0.0.1:{port}", port
    srv.stop()


def _obs(seed=0):
    rng = np.random.default_rng(seed)
    return {"state": rng.normal(size=13).astype(np.float32), "image": rng.integers(0, 255, (224, 224, 3), dtype=np.uint8)}


def test_round_trip_and_metadata(server):
    policy, url, _ = server
    with PolicyClient(url) as c:
        assert c.metadata["chunk_size"] == 16 and c.metadata["action_dim"] == 13
        obs = _obs()
        actions = c.infer(obs)
        assert actions.shape == (16, 13) and actions.dtype == np.float32
        np.testing.assert_allclose(actions, policy.expected(obs["state"]), rtol=1e-6)
        assert c.ping() < 1000


def test_health_endpoint(server):
    _, _, port = server
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
        assert r.status == 200 and r.read().strip() == b"ok"


@pytest.mark.parametrize(
    "payload, code",
    [
        (b"\x00\xffgarbage\x13", "bad_message"),
        (pack({"type": "infer", "id": 1, "observation": {"state": np.zeros(5, np.float32), "image": np.zeros((4, 4, 3), np.uint8)}}), "bad_observation"),
        (pack({"type": "infer", "id": 2, "observation": {"state": np.full(13, np.nan, np.float32), "image": np.zeros((4, 4, 3), np.uint8)}}), "bad_observation"),
        (pack({"type": "infer", "id": 3, "observation": {"image": np.zeros((4, 4, 3), np.uint8)}}), "bad_observation"),
        (pack({"type": "launch_missiles"}), "bad_type"),
        (msgpack.packb({"type": "infer", "observation": {"state": {"__nd__": True, "dtype": "|O", "shape": [1], "data": b"x"}}}), "bad_dtype"),
        (msgpack.packb({"type": "infer", "observation": {"state": {"__nd__": True, "dtype": "<f4", "shape": [13], "data": b"short"}}}), "bad_array"),
        (msgpack.packb([1, 2, 3]), "bad_message"),
    ],
)
def test_bad_requests_get_error_replies_and_the_server_keeps_serving(server, payload, code):
    policy, url, _ = server
    with PolicyClient(url) as c:
        reply = c.send_raw(payload)
        assert reply["type"] == "error" and reply["code"] == code, reply
        obs = _obs(1)
        np.testing.assert_allclose(c.infer(obs), policy.expected(obs["state"]), rtol=1e-6)


def test_task_string_passes_through_and_non_strings_are_refused():
    from handvla.robot.server import validate_observation

    spec = LinearPolicy().metadata()["observation"]
    obs = {"state": np.zeros(13, np.float32), "image": np.zeros((2, 2, 3), np.uint8)}
    assert validate_observation({**obs, "task": "open the door"}, spec)["task"] == "open the door"
    with pytest.raises(ProtocolError, match="task"):
        validate_observation({**obs, "task": np.zeros(3)}, spec)


def test_client_raises_policy_error_for_wrong_shapes(server):
    _, url, _ = server
    with PolicyClient(url) as c, pytest.raises(PolicyError, match="shape"):
        c.infer({"state": np.zeros(3, np.float32), "image": np.zeros((2, 2, 3), np.uint8)})


def test_twenty_concurrent_clients(server):
    policy, url, _ = server
    errors, results = [], {}

    def worker(i):
        try:
            with PolicyClient(url) as c:
                for k in range(3):
                    obs = _obs(100 * i + k)
                    results[(i, k)] = np.allclose(c.infer(obs), policy.expected(obs["state"]), rtol=1e-6)
                c.send_raw(b"junk")  # each also misbehaves once
        except Exception as e:  # collected and asserted below
            errors.append(repr(e))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert len(results) == 60 and all(results.values())


def test_action_chunk_broker_replans(server):
    policy, url, _ = server
    with PolicyClient(url) as c:
        broker = ActionChunkBroker(c, replan_every=4)
        obs = _obs(7)
        got = [broker.act(obs) for _ in range(6)]
        expect = policy.expected(obs["state"])
        np.testing.assert_allclose(got[3], expect[3], rtol=1e-6)
        np.testing.assert_allclose(got[4], expect[0], rtol=1e-6)  # a new chunk after 4 actions
        with pytest.raises(ValueError, match="replan_every"):
            ActionChunkBroker(c, replan_every=17)


def test_protocol_round_trip_and_rejections():
    arrays = {"a": np.arange(6, dtype=np.int16).reshape(2, 3), "b": np.float64(2.5), "c": np.zeros((0, 4), np.float32)}
    back = unpack(pack({"type": "x", **arrays}))
    assert np.array_equal(back["a"], arrays["a"]) and back["a"].dtype == np.int16
    assert back["b"] == 2.5 and back["c"].shape == (0, 4)
    with pytest.raises(ProtocolError):
        pack({"type": "x", "o": np.array([object()])})
    with pytest.raises(ProtocolError, match="text frames"):
        unpack("hello")


def test_client_imports_without_torch():
    code = "import sys, handvla.robot.client; assert 'torch' not in sys.modules, 'torch imported'; print('ok')"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr


class SlowBatchPolicy(LinearPolicy):
    """A forward pass costs 50 ms whatever the batch size (like a model on an accelerator); state[0] = -99
    makes infer fail for that observation only."""

    def __init__(self):
        super().__init__()
        self.batches = []

    def infer_batch(self, observations):
        import time

        time.sleep(0.05)
        self.batches.append(len(observations))
        if any(o["state"][0] == -99 for o in observations):
            raise ValueError("a poisoned observation in the batch")
        return [self.expected(o["state"]) for o in observations]

    def infer(self, obs):
        import time

        time.sleep(0.05)
        if obs["state"][0] == -99:
            raise ValueError("poisoned observation")
        return self.expected(obs["state"])


def _hammer(url, n_clients, per_client, poison_client=None):
    """n_clients threads, each with its own connection; returns per-request (ok, error) results."""
    results, errors = {}, {}

    def run(k):
        with PolicyClient(url) as c:
            for i in range(per_client):
                obs = _obs(100 * k + i)
                if k == poison_client:
                    obs["state"][0] = -99
                try:
                    results[k, i] = (obs["state"], c.infer(obs))
                except PolicyError as e:
                    errors[k, i] = str(e)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(n_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, errors


def test_server_batches_concurrent_clients_and_isolates_failures():
    import time

    policy = SlowBatchPolicy()
    timings = {}
    for max_batch, poison in ((32, None), (1, None), (32, 7)):
        srv = PolicyServer(policy, port=0, max_batch=max_batch)
        port = srv.start_in_thread()
        try:
            t = time.perf_counter()
            results, errors = _hammer(f"ws://127.0.0.1:{port}", 8, 3, poison_client=poison)
            timings[max_batch, poison] = time.perf_counter() - t
        finally:
            srv.stop()
        for state, actions in results.values():  # every answer is its own observation's
            np.testing.assert_allclose(actions, policy.expected(state), rtol=1e-6)
        if poison is not None:  # a failing observation fails its own request only
            assert len(results) == 21 and len(errors) == 3
            assert all("policy_error" in e and "poisoned" in e for e in errors.values())
        else:
            assert len(results) == 24 and not errors
        if max_batch == 1:
            assert srv.batch_sizes == []  # one infer at a time
        else:
            assert max(srv.batch_sizes) > 1
            if poison is None:
                # 8 clients that each wait for their answer: requests queue during a pass and share the next
                assert sum(srv.batch_sizes) == 24 and len(srv.batch_sizes) <= 16, srv.batch_sizes
    # 24 requests one by one take >= 24 x 50 ms (sleeps: a lower bound that holds on a loaded machine)
    assert timings[1, None] > 1.2, timings
