"""The node API: a node is one annotated function, declared once.

    @node("add", category="math")
    def add(a: float, b: float = 0.0) -> float:
        "Sum of two numbers."
        return a + b

Inputs come from the signature (pydantic validates literals and gives each node a
JSON Schema), outputs from the return annotation (a NamedTuple for several named
outputs). The first parameter may be `ctx: Context` for progress, cancellation,
models and outputs.
"""
from __future__ import annotations

import inspect
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, get_type_hints

from pydantic import TypeAdapter, ValidationError
from pydantic.fields import FieldInfo

from .limits import declared_limits
from .types import accepts_literal, names_written_files, strip_annotated, type_name, unwrap_lazy

NODE_ATTRIBUTE = "__loom_node__"


@dataclass(eq=False)
class InputSpec:
    name: str
    annotation: Any          # as declared, constraints included, Lazy removed
    required: bool
    default: Any
    lazy: bool
    literal: bool            # may be written as a JSON literal in a graph
    description: str | None
    limits: tuple[str, ...] = ()   # kinds this input counts against (`engine.limits.Limit`)
    _adapter: TypeAdapter | None = field(default=None, repr=False)

    @property
    def port_type(self) -> Any:
        return strip_annotated(self.annotation)

    @property
    def adapter(self) -> TypeAdapter:
        if self._adapter is None:
            self._adapter = TypeAdapter(self.annotation)
        return self._adapter

    def check_value(self, value: Any) -> Any:
        """The validated (and int -> float coerced) value, or ValueError with a readable reason."""
        try:
            return self.adapter.validate_python(value, strict=True)
        except ValidationError as exc:
            raise ValueError(describe_validation_error(exc, value)) from None

    def json_schema(self) -> dict:
        if self.literal:
            try:
                schema = self.adapter.json_schema()
            except Exception:  # noqa: BLE001 - a literal type pydantic cannot describe
                schema = {}
        else:
            schema = {}
        schema["x-loom-type"] = type_name(self.annotation)
        if not self.literal:
            schema["x-loom-link-only"] = True
        if self.lazy:
            schema["x-loom-lazy"] = True
        if not self.required and self.literal:
            try:
                schema["default"] = self.adapter.dump_python(self.default, mode="json")
            except Exception:  # noqa: BLE001
                pass
        if self.description:
            schema["description"] = self.description
        if self.limits:
            schema["x-loom-limit"] = list(self.limits)
        return schema


def describe_validation_error(exc: ValidationError, value: Any) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()))
        msg = err["msg"]
        parts.append(f"{loc}: {msg}" if loc else msg)
    return f"{'; '.join(parts)} (got {value!r})"


@dataclass(eq=False)
class NodeSpec:
    """Everything the engine knows about one node type."""

    type: str
    version: int
    category: str
    description: str
    fn: Callable
    inputs: dict[str, InputSpec]
    outputs: dict[str, Any]
    single_output: bool
    output_node: bool = False
    fingerprint: Callable[..., str] | None = None
    cacheable: bool = True
    wants_ctx: bool = False
    fingerprint_wants_settings: bool = False
    migrations: dict[int, Callable[[dict], dict]] = field(default_factory=dict)

    @property
    def file_outputs(self) -> list[str]:
        """Outputs naming files this node wrote to the output folder (`OutputFiles`)."""
        return [name for name, tp in self.outputs.items() if names_written_files(tp)]

    def migration(self, from_version: int):
        """Register a function that rewrites inputs of `from_version` to the next version."""
        def register(fn: Callable[[dict], dict]):
            self.migrations[from_version] = fn
            return fn
        return register

    def migrate(self, version: int, inputs: dict) -> dict:
        while version < self.version:
            step = self.migrations.get(version)
            if step is None:
                raise ValueError(f"no migration from version {version} of '{self.type}' "
                                 f"(current {self.version})")
            inputs = step(dict(inputs))
            version += 1
        return inputs

    @property
    def input_limits(self) -> dict[str, tuple[str, ...]]:
        """{input: limit kinds} for inputs that declare a `Limit`."""
        return {name: spec.limits for name, spec in self.inputs.items() if spec.limits}

    def call(self, ctx: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Run the node on checked inputs, within the run's limits (`ctx.budget`)."""
        budget = getattr(ctx, "budget", None)
        if budget is not None:
            budget.before_node(self.input_limits, kwargs)
        result = self.fn(ctx, **kwargs) if self.wants_ctx else self.fn(**kwargs)
        if self.single_output:
            outputs = {next(iter(self.outputs)): result}
        elif not isinstance(result, tuple) or len(result) != len(self.outputs):
            raise TypeError(f"returned {type(result).__name__}, expected a tuple of "
                            f"{len(self.outputs)} outputs ({', '.join(self.outputs)})")
        else:
            outputs = dict(zip(self.outputs, result))
        if budget is not None:
            budget.after_node(outputs)
        return outputs

    def json_schema(self) -> dict:
        props = {name: spec.json_schema() for name, spec in self.inputs.items()}
        required = [name for name, spec in self.inputs.items() if spec.required]
        return {
            "type": self.type,
            "version": self.version,
            "category": self.category,
            "description": self.description,
            "output_node": self.output_node,
            "cacheable": self.cacheable,
            "inputs": {"type": "object", "properties": props, "required": required,
                       "additionalProperties": False},
            "outputs": {name: type_name(tp) for name, tp in self.outputs.items()},
        }


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _default_output_name(tp: Any) -> str:
    bare = strip_annotated(tp)
    if isinstance(bare, type) and bare.__module__ not in ("builtins", "typing"):
        return _snake(bare.__name__)
    return "value"


def _is_named_tuple(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, tuple) and hasattr(tp, "_fields")


def _description(annotation: Any) -> str | None:
    for meta in getattr(annotation, "__metadata__", ()):
        if isinstance(meta, FieldInfo) and meta.description:
            return meta.description
    return None


def _build_spec(fn: Callable, type_id: str, *, category: str, version: int, output: str | None,
                output_node: bool, fingerprint: Callable | None, cache: bool) -> NodeSpec:
    hints = get_type_hints(fn, include_extras=True)
    params = list(inspect.signature(fn).parameters.values())
    wants_ctx = bool(params) and params[0].name == "ctx"
    if wants_ctx:
        params = params[1:]
    inputs: dict[str, InputSpec] = {}
    for p in params:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise TypeError(f"node '{type_id}': *args/**kwargs cannot be node inputs")
        if p.name not in hints:
            raise TypeError(f"node '{type_id}': input '{p.name}' needs a type annotation")
        annotation, lazy = unwrap_lazy(hints[p.name])
        required = p.default is inspect.Parameter.empty
        inputs[p.name] = InputSpec(
            name=p.name, annotation=annotation, required=required,
            default=None if required else p.default, lazy=lazy,
            literal=accepts_literal(annotation) and not lazy, description=_description(annotation),
            limits=declared_limits(annotation))
    ret = hints.get("return", typing.Any)
    if _is_named_tuple(ret):
        outputs = dict(get_type_hints(ret, include_extras=True))
        single = False
    else:
        outputs = {output or _default_output_name(ret): ret}
        single = True
    doc = inspect.getdoc(fn) or ""
    wants_settings = fingerprint is not None and "settings" in inspect.signature(fingerprint).parameters
    return NodeSpec(type=type_id, version=version, category=category, description=doc,
                    fn=fn, inputs=inputs, outputs=outputs, single_output=single,
                    output_node=output_node, fingerprint=fingerprint, cacheable=cache,
                    wants_ctx=wants_ctx, fingerprint_wants_settings=wants_settings)


def node(type_id: str, *, category: str = "misc", version: int = 1, output: str | None = None,
         output_node: bool = False, fingerprint: Callable[..., str] | None = None,
         cache: bool = True):
    """Declare a function as a node type.

    type_id      stable id written in graph files
    version      bump when inputs change; register migrations with `fn.spec.migration(old)`
    output       name of the single output (default: snake_case of the return class, or "value")
    output_node  a sink (save, show): what the graph is run for
    fingerprint  fn(**literal_inputs) -> str describing outside state (e.g. a file's hash);
                 it sees the node's literal inputs only, plus `settings=` (the run's
                 Settings: where the models folders are) when it declares that parameter
    cache        False for nodes with unseeded randomness or side effects that must repeat
    """
    def wrap(fn: Callable) -> Callable:
        spec = _build_spec(fn, type_id, category=category, version=version, output=output,
                           output_node=output_node, fingerprint=fingerprint, cache=cache)
        setattr(fn, NODE_ATTRIBUTE, spec)
        fn.spec = spec
        return fn
    return wrap


def spec_of(obj: Any) -> NodeSpec | None:
    return getattr(obj, NODE_ATTRIBUTE, None)
