"""Prometheus metrics, one registry per app (no process-global state).

Label values come from the spec, never from the client: a model name the spec doesn't serve is counted as
``_unknown`` (a client can't grow the label set), and an outcome the client caused by leaving is status ``499``.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from gateway.executors.base import StepInfo

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
UNKNOWN_MODEL = "_unknown"
"""The ``model`` label of requests for a name the spec doesn't serve (404s, bodies that failed validation)."""
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "swarmgate_requests",
            "Requests by model, endpoint and outcome (HTTP status; 499: the client went away)",
            ["model", "endpoint", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "swarmgate_request_latency_seconds",
            "End-to-end request latency",
            ["model", "endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "swarmgate_time_to_first_token_seconds",
            "Time to the first streamed answer token",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.itl = Histogram(
            "swarmgate_inter_token_latency_seconds",
            "Time between streamed answer increments",
            ["model"],
            buckets=TOKEN_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter(
            "swarmgate_prompt_tokens", "Prompt tokens processed (all steps)", ["model"], registry=r
        )
        self.completion_tokens = Counter(
            "swarmgate_completion_tokens", "Completion tokens generated (all steps)", ["model"], registry=r
        )
        self.expert_calls = Counter("swarmgate_expert_calls", "Engine calls per expert", ["expert"], registry=r)
        self.expert_latency = Histogram(
            "swarmgate_expert_latency_seconds",
            "Latency of one expert call",
            ["expert"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.request_cost = Histogram(
            "swarmgate_request_cost",
            "Summed expert cost of a request",
            ["model"],
            buckets=(0.5, 1, 2, 3, 4, 6, 8, 12, 16, 32),
            registry=r,
        )
        self.route_steps = Histogram(
            "swarmgate_route_steps",
            "Engine calls per answer",
            ["model"],
            buckets=(1, 2, 3, 4, 5, 6, 8, 12, 16),
            registry=r,
        )
        self.router_decision = Histogram(
            "swarmgate_router_decision_seconds",
            "Router policy decision latency per step",
            ["model"],
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05),
            registry=r,
        )
        self.in_flight = Gauge("swarmgate_requests_in_flight", "Requests being executed", ["model"], registry=r)
        self.queued = Gauge("swarmgate_requests_queued", "Requests waiting for a concurrency slot", registry=r)
        self.spec_reloads = Counter(
            "swarmgate_spec_reloads", "Spec reload attempts by outcome", ["outcome"], registry=r
        )

    def observe_steps(self, model: str, steps: list[StepInfo]) -> None:
        cost = 0.0
        for s in steps:
            self.expert_calls.labels(s.expert).inc()
            self.expert_latency.labels(s.expert).observe(s.latency_ms / 1e3)
            self.prompt_tokens.labels(model).inc(s.prompt_tokens)
            self.completion_tokens.labels(model).inc(s.completion_tokens)
            cost += s.cost
            decision = s.extra.get("decision_ms")
            if isinstance(decision, int | float):
                self.router_decision.labels(model).observe(decision / 1e3)
        self.request_cost.labels(model).observe(cost)
        self.route_steps.labels(model).observe(len(steps))

    def render(self) -> bytes:
        return generate_latest(self.registry)
