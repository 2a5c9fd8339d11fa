"""The executor: validate, plan, then run only what is not already cached.

Run order: (1) apply params and validate, (2) plan and key every needed node,
(3) walk back from the output nodes and stop at anything cached, (4) run the rest in
topological order, caching each result as it completes. Lazy inputs are evaluated
only when a node asks for them; a lazy evaluation may override literal inputs,
which is how a bounded retry loop reruns a sub-graph with the next seed.
"""
from __future__ import annotations

import threading
import time
import traceback
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from .cache import Cache
from .context import CancelToken, Context
from .errors import Cancelled, GraphError, LoomError, NodeError, NodeInputError, Problem
from .events import (NODE_CACHED, NODE_FAILED, NODE_FINISHED, NODE_STARTED, RUN_CANCELLED,
                     RUN_FAILED, RUN_FINISHED, RUN_STARTED, Event, EventBus, Listener)
from .explain import CACHED, NOT_NEEDED, RAN, WILL_RUN, RunHistory, why_cached, why_not_cached
from .graph import Graph, Link
from .limits import Limits, RunBudget
from .models import ModelManager, ModelPaths
from .plan import Plan, make_plan, variant
from .registry import Registry
from .settings import Settings
from .types import Lazy
from .validate import CheckedGraph, check_override, validate


@dataclass
class NodeRecord:
    node: str
    type: str
    key: str
    status: str          # "ran" | "cached" | "failed"
    seconds: float
    reason: str


@dataclass
class RunResult:
    run_id: str
    status: str          # "succeeded" | "failed" | "cancelled"
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    records: list[NodeRecord] = field(default_factory=list)
    error: LoomError | None = None

    @property
    def ran(self) -> list[str]:
        return [r.node for r in self.records if r.status == RAN]

    @property
    def cached(self) -> list[str]:
        return [r.node for r in self.records if r.status == CACHED]

    @property
    def timings(self) -> dict[str, float]:
        totals: dict[str, float] = {}
        for r in self.records:
            totals[r.node] = totals.get(r.node, 0.0) + r.seconds
        return totals

    @property
    def reasons(self) -> dict[str, str]:
        return {r.node: r.reason for r in self.records}

    def raise_for_status(self) -> "RunResult":
        if self.error is not None:
            raise self.error
        return self

    def to_dict(self) -> dict:
        error = self.error.to_dict() if hasattr(self.error, "to_dict") else (
            {"error": type(self.error).__name__.lower(), "message": str(self.error)} if self.error else None)
        return {"run_id": self.run_id, "status": self.status,
                "nodes": [vars(r) for r in self.records], "error": error}


@dataclass
class Explanation:
    node: str
    type: str
    status: str          # "cached" | "will run" | "not needed"
    reason: str


class Executor:
    """Runs graphs against one cache, one model manager and one event bus.

    Keep one Executor for many runs (the CLI process, the server worker): the cache and
    loaded models stay warm. Runs are serialised; `run` is safe to call from any thread.
    """

    def __init__(self, registry: Registry | None = None, settings: Settings | None = None,
                 cache: Cache | None = None, models: ModelManager | None = None,
                 events: EventBus | None = None, history: RunHistory | None = None,
                 limits: Limits | None = None):
        self.registry = registry if registry is not None else Registry.default()
        self.settings = settings if settings is not None else Settings()
        self.cache = cache if cache is not None else Cache()
        memory_gb = self.settings.models_memory_gb
        self.models = models if models is not None else ModelManager(
            ModelPaths(self.settings.models_dirs, self.settings.extra_model_paths),
            budget_bytes=int(memory_gb * 2**30) if memory_gb is not None else None)
        self.cache.memory.bind_models(self.models)
        self.events = events if events is not None else EventBus()
        self.history = history if history is not None else RunHistory()
        self.limits = limits if limits is not None else Limits()   # per node and per run
        self._run_lock = threading.Lock()
        self._plans_lock = threading.Lock()
        self._last_plans: OrderedDict[str, Plan] = OrderedDict()   # graph name -> its last plan

    # -- before running -----------------------------------------------------------------
    def check(self, graph: Graph, params: dict[str, Any] | None = None) -> CheckedGraph:
        """Apply params and validate; raises GraphError listing every problem."""
        graph = graph.with_params(params)
        previous = self._last_plan(graph.name)
        return validate(graph, self.registry, previous.checked if previous else None)

    def plan(self, graph: Graph, params: dict[str, Any] | None = None,
             nonce: str | None = None) -> Plan:
        """Validate and key the graph, reusing what is unchanged since this executor last
        planned a graph of the same name (safe from any thread)."""
        graph = graph.with_params(params)
        previous = self._last_plan(graph.name)
        checked = validate(graph, self.registry, previous.checked if previous else None)
        plan = make_plan(checked, nonce or uuid.uuid4().hex, self.settings, previous)
        with self._plans_lock:
            self._last_plans[graph.name] = plan
            self._last_plans.move_to_end(graph.name)
            while len(self._last_plans) > _REMEMBERED_PLANS:
                self._last_plans.popitem(last=False)
        return plan

    def _last_plan(self, graph_name: str) -> Plan | None:
        with self._plans_lock:
            return self._last_plans.get(graph_name)

    def explain(self, graph: Graph, params: dict[str, Any] | None = None) -> dict[str, Explanation]:
        """What the next run would do for each node, and why, without running anything."""
        plan = self.plan(graph, params)
        previous = self.history.last(graph.name)
        stale = stale_nodes(plan, self.cache)
        cached = self._available(plan, set())
        available = lambda node_id: node_id not in stale and cached(node_id)  # noqa: E731
        demanded = set(_demand_order(plan, plan.checked.outputs, available))
        out = {}
        for node_id in plan.order:
            parts, spec = plan.parts[node_id], plan.checked.specs[node_id]
            if node_id not in demanded:
                status, reason = NOT_NEEDED, "not needed: every node that uses it is cached"
            elif available(node_id):
                status, reason = CACHED, why_cached(previous.get(node_id), parts)
            elif node_id in stale:
                status, reason = WILL_RUN, STALE_VARIANT
            else:
                status = WILL_RUN
                reason = why_not_cached(parts, previous.get(node_id), cacheable=spec.cacheable,
                                        use_cache=True, evicted=self.cache.was_evicted(parts.key),
                                        unstorable=self.cache.unstorable(parts.key))
            out[node_id] = Explanation(node_id, spec.type, status, reason)
        return out

    def _available(self, plan: Plan, computed: set[str], use_cache: bool = True):
        def available(node_id: str) -> bool:
            key = plan.key(node_id)
            return key in computed or (use_cache and plan.checked.specs[node_id].cacheable
                                       and self.cache.contains(key))
        return available

    # -- running ------------------------------------------------------------------------
    def run(self, graph: Graph, params: dict[str, Any] | None = None, *,
            cancel: CancelToken | None = None, listener: Listener | None = None,
            run_id: str | None = None, use_cache: bool = True, check: bool = True) -> RunResult:
        """Run the graph. Invalid graphs raise GraphError before anything runs.

        With check=True a failed or cancelled run raises (NodeError / Cancelled, with the
        result attached as `.result`); with check=False the result carries the error.
        """
        run_id = run_id or uuid.uuid4().hex
        graph = graph.with_params(params)
        plan = self.plan(graph, nonce=run_id)
        unsubscribe = None
        if listener is not None:  # this run's events only, though the bus carries every run's
            unsubscribe = self.events.subscribe(
                lambda event: listener(event) if event.run_id == run_id else None)
        try:
            with self._run_lock:
                result = _Run(self, plan, graph, run_id, cancel or CancelToken(), use_cache).execute()
        finally:
            if unsubscribe:
                unsubscribe()
        if check and result.error is not None:
            result.error.result = result
            raise result.error
        return result


def _demand_order(plan: Plan, targets: list[str], available) -> list[str]:
    """Nodes to resolve for `targets`, inputs first, not descending past available ones."""
    order: list[str] = []
    seen: set[str] = set()
    stack: list[tuple[str, bool]] = [(t, False) for t in reversed(targets)]
    links, specs = plan.checked.links, plan.checked.specs
    while stack:
        node_id, inputs_done = stack.pop()
        if inputs_done:
            order.append(node_id)
            continue
        if node_id in seen:
            continue
        seen.add(node_id)
        if available(node_id):
            order.append(node_id)
            continue
        stack.append((node_id, True))
        inputs = specs[node_id].inputs
        for name, link in links[node_id].items():
            if not inputs[name].lazy and link.node not in seen:
                stack.append((link.node, False))
    return order


_JSON_KINDS = (bool, int, float, str, list, dict, tuple)
_REMEMBERED_PLANS = 8   # graphs whose last plan an executor keeps for incremental reruns
# Stored beside the outputs of a node that evaluated lazy inputs with overrides: each
# variant's overrides, the node it asked for and that node's key, verified on a cache hit.
VARIANTS = "$variants"
STALE_VARIANT = "a varied input's sub-graph changed (e.g. the fingerprint of a file a retry try read)"


class _Run:
    """One execution of a plan: values by key, records, events."""

    def __init__(self, executor: Executor, plan: Plan, graph: Graph, run_id: str,
                 cancel: CancelToken, use_cache: bool):
        self.ex = executor
        self.plan = plan
        self.graph = graph
        self.run_id = run_id
        self.cancel = cancel
        self.use_cache = use_cache
        self.previous = executor.history.last(graph.name)
        self.values: dict[str, dict[str, Any]] = {}
        self.records: list[NodeRecord] = []
        self.pinned: list[str] = []
        self.params = graph.param_values()
        self.budget = RunBudget(executor.limits)
        self.variant_reads: list[list] = []     # variants the running node evaluated (see VARIANTS)
        self.stale: set[str] = set()            # cached, but a variant it read has changed

    def publish(self, kind: str, node: str | None = None, node_type: str | None = None, **data):
        self.ex.events.publish(Event(kind, self.run_id, node, node_type, data))

    def execute(self) -> RunResult:
        plan = self.plan
        if self.use_cache:
            self.discard_stale(plan)
        self._pin(plan.keys.values())
        self.publish(RUN_STARTED, nodes=len(plan.order))
        result = RunResult(self.run_id, "succeeded", records=self.records)
        try:
            self.materialize(plan, plan.checked.outputs)
            result.outputs = {n: self.values[plan.key(n)] for n in plan.checked.outputs}
            self.publish(RUN_FINISHED, ran=len(result.ran), cached=len(result.cached))
        except Cancelled as exc:
            result.status, result.error = "cancelled", exc
            self.publish(RUN_CANCELLED, message=str(exc))
        except NodeError as exc:
            result.status, result.error = "failed", exc
            self.publish(RUN_FAILED, **exc.to_dict())
        finally:
            self.ex.cache.memory.unpin(self.pinned)
            self.ex.history.record(self.graph.name, {
                r.node: plan.parts[r.node] for r in self.records if r.node in plan.parts
                and r.key == plan.key(r.node)})
        return result

    def _pin(self, keys) -> None:
        keys = list(keys)
        self.ex.cache.memory.pin(keys)
        self.pinned.extend(keys)

    def materialize(self, plan: Plan, targets: list[str]) -> None:
        available = self.ex._available(plan, self.values.keys(), self.use_cache)
        for node_id in _demand_order(plan, targets, available):
            self.resolve(plan, node_id)

    def resolve(self, plan: Plan, node_id: str) -> None:
        key = plan.key(node_id)
        if key in self.values:
            return
        spec = plan.checked.specs[node_id]
        if self.use_cache and spec.cacheable:
            hit = self.ex.cache.get(key)
            if hit is not None and VARIANTS in hit:
                hit = self.verified(plan, node_id, hit)
            if hit is not None:
                self.values[key] = hit
                self.records.append(NodeRecord(node_id, spec.type, key, CACHED, 0.0,
                                               why_cached(self.previous.get(node_id), plan.parts[node_id])))
                self.publish(NODE_CACHED, node_id, spec.type)
                return
        missing = [link.node for name, link in plan.checked.links[node_id].items()
                   if not spec.inputs[name].lazy and plan.key(link.node) not in self.values]
        if missing:  # an entry that looked cached could not be read back: compute it
            self.materialize(plan, missing)
        self.run_node(plan, node_id)

    def run_node(self, plan: Plan, node_id: str) -> None:
        if self.cancel.cancelled:
            raise Cancelled(f"cancelled before node '{node_id}'")
        spec, parts = plan.checked.specs[node_id], plan.parts[node_id]
        reason = why_not_cached(parts, self.previous.get(node_id), cacheable=spec.cacheable,
                                use_cache=self.use_cache, evicted=self.ex.cache.was_evicted(parts.key),
                                unstorable=self.ex.cache.unstorable(parts.key))
        if node_id in self.stale:
            reason = STALE_VARIANT
        self.publish(NODE_STARTED, node_id, spec.type, reason=reason)
        started = time.perf_counter()
        outer_reads, self.variant_reads = self.variant_reads, []
        try:
            kwargs = self.inputs_for(plan, node_id)
            ctx = Context(node_id, spec.type, self.run_id, self.ex.settings, self.ex.models,
                          self.graph, self.params, self.cancel, self.ex.events.publish,
                          budget=self.budget)
            outputs = spec.call(ctx, kwargs)
        except (Cancelled, NodeError):
            raise
        except Exception as exc:  # noqa: BLE001 - any node failure becomes a NodeError
            seconds = time.perf_counter() - started
            if isinstance(exc, NodeInputError):
                message = f"input '{exc.input}': {exc.message}" if exc.input else exc.message
            elif isinstance(exc, LoomError):
                message = str(exc)
            else:
                message = f"{type(exc).__name__}: {exc}"
            raise self.failed(node_id, spec.type, parts.key, reason, seconds, message) from exc
        finally:
            variant_reads, self.variant_reads = self.variant_reads, outer_reads
        seconds = time.perf_counter() - started
        self.values[parts.key] = outputs
        if self.use_cache and spec.cacheable:
            self._pin([parts.key])
            try:
                self.ex.cache.put(parts.key, {**outputs, VARIANTS: variant_reads} if variant_reads else outputs)
            except Exception as exc:  # noqa: BLE001 - out of memory, an encoder bug, a full disk
                message = f"cannot store the result: {type(exc).__name__}: {exc}"
                raise self.failed(node_id, spec.type, parts.key, reason, seconds, message) from exc
        self.records.append(NodeRecord(node_id, spec.type, parts.key, RAN, seconds, reason))
        self.publish(NODE_FINISHED, node_id, spec.type, seconds=seconds)

    def failed(self, node_id: str, node_type: str, key: str, reason: str, seconds: float,
               message: str) -> NodeError:
        """Record and announce a node's failure; the caller raises the returned error."""
        error = NodeError(node_id, node_type, message, traceback.format_exc())
        self.records.append(NodeRecord(node_id, node_type, key, "failed", seconds, reason))
        self.publish(NODE_FAILED, node_id, node_type, message=message,
                     traceback=error.traceback, seconds=seconds)
        return error

    def inputs_for(self, plan: Plan, node_id: str) -> dict[str, Any]:
        spec = plan.checked.specs[node_id]
        kwargs = dict(plan.literals[node_id])
        for name, link in plan.checked.links[node_id].items():
            ispec = spec.inputs[name]
            if ispec.lazy:
                kwargs[name] = Lazy(partial(self.evaluate_lazy, plan, link))
                continue
            value = self.values[plan.key(link.node)][link.output]
            # Linked JSON-like values meet the same constraints as literals (a linked width
            # must still be a multiple of 8); objects were type-checked when validating edges.
            if ispec.literal and isinstance(value, _JSON_KINDS):
                try:
                    value = ispec.check_value(value)
                except ValueError as exc:
                    raise NodeInputError(name, f"value from '{link.node}.{link.output}' {exc}") from None
            kwargs[name] = value
        return kwargs

    def evaluate_lazy(self, plan: Plan, link: Link, overrides: dict | None = None) -> Any:
        if overrides:
            checked_overrides = {}
            for (node_id, name), value in overrides.items():
                try:
                    checked_overrides[(node_id, name)] = check_override(plan.checked, node_id, name, value)
                except ValueError as exc:
                    raise NodeInputError(None, f"cannot override {node_id}.{name}: {exc}") from None
            plan = variant(plan, checked_overrides)
            self.variant_reads.append([[[n, i, v] for (n, i), v in overrides.items()],
                                       link.node, plan.key(link.node)])
        self.materialize(plan, [link.node])
        return self.values[plan.key(link.node)][link.output]

    def discard_stale(self, plan: Plan) -> None:
        """Drop cached results that rest on a variant that changed (see `stale_nodes`)."""
        stale = stale_nodes(plan, self.ex.cache)
        self.stale |= stale
        for node_id in stale:
            self.ex.cache.discard(plan.key(node_id))

    def verified(self, plan: Plan, node_id: str, hit: dict[str, Any]) -> dict[str, Any] | None:
        """The cached outputs without their variant record, or None when a variant changed."""
        if not variants_current(plan, hit):
            self.stale.add(node_id)
            return None
        return {name: value for name, value in hit.items() if name != VARIANTS}


def variants_current(plan: Plan, hit: dict[str, Any]) -> bool:
    """A cached result of a node that evaluated variants (a retry's tries, a batch's items)
    stands only while each variant still has the key it had: the node's own key cannot cover
    a file that only a varied input names."""
    for overrides, target, key in hit.get(VARIANTS, ()):
        try:
            checked = {(n, i): check_override(plan.checked, n, i, v) for n, i, v in overrides}
            if variant(plan, checked).key(target) != key:
                return False
        except (ValueError, LoomError):
            return False
    return True


def stale_nodes(plan: Plan, cache: Cache) -> set[str]:
    """Cached nodes whose result rests on a variant that changed, and everything downstream
    of them in this plan (their keys cannot show the change)."""
    specs, links = plan.checked.specs, plan.checked.links
    lazy_specs = {id(spec) for spec in set(specs.values()) if any(i.lazy for i in spec.inputs.values())}
    stale = set()
    for node_id in plan.order:
        spec = specs[node_id]
        if id(spec) in lazy_specs and spec.cacheable:
            hit = cache.get(plan.key(node_id))
            if hit is not None and not variants_current(plan, hit):
                stale.add(node_id)
    if stale:
        for node_id in plan.order:
            if node_id not in stale and any(link.node in stale for link in links[node_id].values()):
                stale.add(node_id)
    return stale


__all__ = ["Executor", "RunResult", "NodeRecord", "Explanation", "GraphError", "Problem"]
