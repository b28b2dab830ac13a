"""How long one batched model call takes, by the cost of the batch.

The executor names each batch's cost as a :class:`CostKey`: a ``kind`` (what sort of call:
``"plain"``, ``"rtc"``, ``"decode"``, ``"prefill"``) and a ``size`` (how much work of that
kind: items, items x denoising steps, tokens). A 512-token prefill slice and a one-token
decode step therefore never share an estimate, and a batch with one degraded item is not
taken for a batch of degraded items.

Per key the estimate keeps an exponentially weighted mean and mean absolute deviation;
``predict`` returns mean + 2 deviations. An unseen size of a seen kind borrows the nearest
larger seen size (latency grows with work), else the nearest smaller one; an unseen kind
gets the prior. Cost grows at most linearly with size, so a size is never predicted slower
than a seen smaller size scaled up linearly: one slow call at a large size (a GC pause, a
cold cache) cannot keep requests degraded for good, because the cheaper calls they then
run pull the larger size's prediction down.

Reads are unlocked: dict lookups are atomic under the GIL and a stale value only shifts a
guess.
"""

from __future__ import annotations

from typing import Hashable, NamedTuple


class CostKey(NamedTuple):
    kind: Hashable
    size: int


class LatencyEstimate:
    def __init__(self, prior_ns: int = 0, alpha: float = 0.2):
        self.prior_ns = prior_ns
        self.alpha = alpha
        self._mean: dict[Hashable, dict[int, float]] = {}
        self._dev: dict[Hashable, dict[int, float]] = {}
        self._predicted: dict[CostKey, int] = {}  # answers since the last observation

    def observe(self, key: CostKey, ns: int) -> None:
        self._predicted = {}
        means = self._mean.setdefault(key.kind, {})
        devs = self._dev.setdefault(key.kind, {})
        mean = means.get(key.size)
        if mean is None:
            means[key.size], devs[key.size] = float(ns), 0.0
            return
        error = ns - mean
        means[key.size] = mean + self.alpha * error
        devs[key.size] += self.alpha * (abs(error) - devs[key.size])

    def predict(self, key: CostKey) -> int:
        value = self._predicted.get(key)
        if value is None:
            value = self._predicted[key] = self._predict(key)
        return value

    def _predict(self, key: CostKey) -> int:
        means = self._mean.get(key.kind)
        if not means:
            return self.prior_ns
        devs = self._dev[key.kind]
        sizes = list(means)

        def value(size: int) -> float:
            return means[size] + 2.0 * devs[size]

        if key.size in means:
            guess = value(key.size)
        else:
            larger = [b for b in sizes if b > key.size]
            guess = value(min(larger) if larger else max(sizes))
        smaller = [b for b in sizes if 0 < b < key.size]
        if smaller:  # at most linear growth from any smaller size seen
            guess = min(guess, min(value(b) * key.size / b for b in smaller))
        return int(guess)
