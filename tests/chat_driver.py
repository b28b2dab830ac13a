"""Chat sessions driven without a socket or a thread: the engine's batcher, slot table and
latency estimate with a fake clock, the real chat executor, and the sans-I/O protocols.

:class:`LockstepEngine` does what :class:`stream.engine.Engine` does with its worker thread,
one batch at a time and synchronously: push what the protocols submit into the real
:class:`~stream.batcher.Batcher`, ask it for the next batch at the fake time, run the batch on
the executor, advance the clock by the batch's modelled cost, hand each outcome back to its
protocol. Every dispatched batch is logged, so tests can check lanes and orderings.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from models.lm_text import ChatFormat
from stream import registry, wire
from stream.batcher import Batcher, Dispatch, Lane, Request
from stream.chat_models import ChatExecutor, chat_cost
from stream.chat_session import ChatProtocol
from stream.engine import Result
from stream.errors import ProtocolError
from stream.hosts import RunBatch, WorkItem
from stream.latency import LatencyEstimate
from stream.session_actions import CancelQueued, Close, PromoteQueued, Send, Submit
from stream.slots import SlotTable

MS = 1_000_000


def chat_model(path, *, slots: int = 4, prefill_slice: int = 8, max_tokens: int = 64) -> registry.LoadedModel:
    """The chat model at ``path`` as the server loads it, with small slices and replies."""
    model = registry.load(f"llm:{path}", registry.ModelOptions(chat_slots=slots, prefill_slice=prefill_slice))
    model.chat.max_tokens = max_tokens
    return model


@dataclass(eq=False)
class Session:
    protocol: ChatProtocol
    slot: int
    messages: list[dict] = field(default_factory=list)
    closed: tuple[int, str] | None = None

    def of_type(self, kind: str) -> list[dict]:
        return [m for m in self.messages if m["type"] == kind]


@dataclass
class Batch:
    lane: Lane
    sessions: list[Session]
    inputs: list[dict]
    cost: Any
    start_ns: int


class LockstepEngine:
    """See the module docstring. ``ns_per_token``/``ns_per_row`` model a batch's duration."""

    def __init__(self, model: registry.LoadedModel, executor: ChatExecutor, *, ns_per_token: int = 1 * MS,
                 ns_per_row: int = 2 * MS):
        self.model = model
        self.executor = executor
        self.latency = LatencyEstimate(prior_ns=int(model.latency_prior_s * 1e9))
        self.batcher = Batcher(model.max_batch_size, self.latency, cost_of=chat_cost, max_queue=1024)
        self.slots = SlotTable(model.slots)
        self.now = 0
        self.ns_per_token, self.ns_per_row = ns_per_token, ns_per_row
        self.batches: list[Batch] = []

    def connect(self) -> Session:
        session = Session(ChatProtocol(self.model), -1)
        session.slot = self.slots.acquire(session)
        assert session.slot is not None, "no free slot"
        self.executor.open_slot(session.slot)
        self.perform(session, session.protocol.opened())
        return session

    def send(self, session: Session, message: dict) -> None:
        self.perform(session, session.protocol.received(wire.packb(message), self.now))

    def perform(self, session: Session, actions: list) -> None:
        for action in actions:
            if isinstance(action, Submit):
                request = Request(session, action.inputs, action.arrival_ns,
                                  action.arrival_ns + int(action.budget_s * 1e9), lane=action.lane,
                                  stream=session.slot, replaceable=False, hold_until_ns=action.arrival_ns,
                                  handle=action.key)
                self.batcher.push(request, self.now)
            elif isinstance(action, CancelQueued):
                self.batcher.drop(session)
            elif isinstance(action, PromoteQueued):
                self.batcher.promote(session, action.lane)
            elif isinstance(action, Send):
                session.messages.append(wire.unpackb(action.frame) if isinstance(action.frame, bytes)
                                        else json.loads(action.frame))
            elif isinstance(action, Close):
                session.closed = (action.code, action.reason)

    def step(self) -> bool:
        """Run one batch; False when nothing is queued."""
        step = self.batcher.next(self.now)
        if not isinstance(step, Dispatch):
            if step.ns is None:
                return False
            self.now = step.ns
            return True
        for request in step.expired:
            self.perform(request.owner, request.owner.protocol.answered(
                request.handle, ProtocolError("deadline_exceeded", "late"), self.now))
        if not step.batch:
            return True
        batch = step.batch
        cost = chat_cost(batch)
        items = [WorkItem(r.inputs, r.degraded, r.stream, r.arrival_ns, r.deadline_ns) for r in batch]
        self.batches.append(Batch(step.lane, [r.owner for r in batch], [r.inputs for r in batch], cost, self.now))
        outputs = self.executor.run(RunBatch(int(step.lane), items, self.slots.active_mask({r.stream for r in batch})))
        start = self.now
        self.now += self.ns_per_token * cost.size if cost.kind == "prefill" else self.ns_per_row * cost.size
        self.latency.observe(cost, self.now - start)
        self.batcher.finished()
        for request, output in zip(batch, outputs):
            result = Result(output, start - request.arrival_ns, self.now - start, len(batch), False)
            self.perform(request.owner, request.owner.protocol.answered(request.handle, result, self.now))
        return True

    def run(self, max_batches: int = 10_000) -> None:
        """Run batches until nothing is queued."""
        for _ in range(max_batches):
            if not self.step():
                return
        raise AssertionError("still busy after max_batches")


def fmt(model: registry.LoadedModel) -> ChatFormat:
    return model.chat.format
