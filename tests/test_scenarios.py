"""The server scenario on a fake clock: queueing, dynamic batching, the rate search."""

from __future__ import annotations

import numpy as np
import pytest

from cifarbench.bench.scenarios import find_max_rate, run_server

IMAGES = np.zeros((7, 4, 4, 3), np.uint8)


class Service:
    """A backend on a fake clock: each call costs ``fixed`` + ``per_image`` x batch seconds; sleep advances time."""

    def __init__(self, fixed: float, per_image: float) -> None:
        self.t, self.fixed, self.per_image, self.batches = 0.0, fixed, per_image, []

    def clock(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.t += max(0.0, s)

    def predict(self, x: np.ndarray) -> np.ndarray:
        self.batches.append(len(x))
        self.t += self.fixed + self.per_image * len(x)
        return np.zeros((len(x), 10), np.float32)


def test_light_load_is_served_one_by_one_at_service_time() -> None:
    s = Service(0.001, 0.0)
    r = run_server(s.predict, IMAGES, rate=10, duration=5, max_batch=8, timing=s)
    assert r["queries"] == sum(s.batches) and r["mean_batch"] == pytest.approx(1.0, abs=0.05)
    assert r["p50_ms"] == pytest.approx(1.0, abs=0.01)  # no queueing at 10 q/s for a 1 ms service
    assert r["achieved_rate"] == pytest.approx(10, rel=0.3)


def test_overload_batches_up_to_the_limit_and_queues() -> None:
    s = Service(0.01, 0.0001)  # capacity at batch 8: 8 / 10.8 ms = 740 q/s
    r = run_server(s.predict, IMAGES, rate=2000, duration=1, max_batch=8, timing=s)
    assert max(s.batches) == 8 and r["mean_batch"] > 7
    assert r["achieved_rate"] < 800 and r["p99_ms"] > 100  # the queue grows without bound
    assert r["dropped"] == 0 and r["served"] == r["queries"]


def test_a_trial_far_behind_stops_and_counts_the_rest_as_dropped() -> None:
    s = Service(0.01, 0.0)  # 100 calls/s at batch 1
    r = run_server(s.predict, IMAGES, rate=10_000, duration=1, max_batch=1, timing=s)
    assert s.t < 3.1 + 0.011  # stopped near 2 x duration + 1 s instead of serving ~10,000 queries (100 s)
    assert r["dropped"] > 9000 and r["served"] + r["dropped"] == r["queries"]
    assert r["achieved_rate"] == pytest.approx(100, rel=0.05)


def test_rate_search_finds_the_highest_rate_within_the_bound() -> None:
    s = Service(0.002, 0.0002)
    res = find_max_rate(s.predict, IMAGES, p99_bound_ms=10, start_rate=50, duration=2, max_batch=16, steps=10,
                        timing=s)
    assert res["max_rate"] is not None and res["at_max"]["p99_ms"] <= 10
    failed = [t["target_rate"] for t in res["trials"] if not t["passed"]]
    assert failed and min(failed) > res["max_rate"]  # bracketed from above by a measured failure
    assert res["max_rate"] > 100  # dynamic batching sustains far more than 1 / (2.2 ms) per single query


def test_rate_search_when_even_the_guess_is_too_fast() -> None:
    s = Service(0.02, 0.0)  # 20 ms per call: a 10 ms p99 bound is never met
    res = find_max_rate(s.predict, IMAGES, p99_bound_ms=10, start_rate=100, duration=1, max_batch=4, steps=4,
                        timing=s)
    assert res["max_rate"] is None and len(res["trials"]) == 4 and not any(t["passed"] for t in res["trials"])
