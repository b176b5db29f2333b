"""OpenTelemetry tracing for grpckit: set up from ``OTEL_*`` variables, plus shared pieces.

Tracing is an optional extra (``pip install 'grpckit-shop[tracing]'``). Nothing here imports
OpenTelemetry until it is used, so ``import grpckit`` works without it.

* :func:`configure_from_env` builds (and by default installs) an SDK ``TracerProvider`` from the
  standard ``OTEL_*`` variables of the mapping it is given; tracing is **off** (``None``) unless
  those variables ask for it.
* :func:`trace_ids` returns the current trace and span ids for log records.
* The server interceptor is :func:`grpckit.interceptors.tracing`; the client interceptors come
  from :func:`grpckit.client.client_tracing_interceptors`. The other public names here
  (metadata getter, address attributes, ``enabled_check``) are the pieces both share.

Spans follow the OpenTelemetry semantic conventions for RPC and gRPC, version
:data:`SEMCONV_VERSION` (``rpc.system``, ``rpc.service``, ``rpc.method``,
``rpc.grpc.status_code``); see docs/tracing.md.

Example::

    import os
    from grpckit.tracing import configure_from_env

    provider = configure_from_env("orders", os.environ)  # in main, never in library code
    if provider is not None:
        app.on_stop(lambda: asyncio.to_thread(provider.shutdown))  # flush queued spans
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import grpc

if TYPE_CHECKING:
    from opentelemetry.propagators.textmap import TextMapPropagator
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.sdk.trace.sampling import Sampler

__all__ = ["INSTALL_HINT", "SEMCONV_VERSION", "configure_from_env", "trace_ids"]

#: The semantic-conventions release whose RPC/gRPC span attributes grpckit emits.
SEMCONV_VERSION = "1.37.0"
#: The instrumentation scope name of grpckit's spans.
SCOPE = "grpckit"
#: What to do when OpenTelemetry is missing.
INSTALL_HINT = "grpckit tracing needs OpenTelemetry: pip install 'grpckit-shop[tracing]'"

#: Codes that mark a SERVER span as an error (semconv: "gRPC Status"); clients: every non-OK.
SERVER_ERROR_CODES = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)


def require_opentelemetry() -> None:
    """Raise ``ImportError`` with :data:`INSTALL_HINT` unless the OpenTelemetry API is present."""
    try:
        import opentelemetry.propagate
        import opentelemetry.trace  # noqa: F401
    except ImportError as exc:
        raise ImportError(INSTALL_HINT) from exc


def enabled_check(tracer_provider: Any) -> Callable[[], bool]:
    """A cheap per-call test: is there a provider that records (not the API's no-op)?

    With ``tracer_provider=None`` the global provider is looked up until one is installed
    (about 2 µs a call); OpenTelemetry installs a global provider at most once, so from then
    on the answer is cached.
    """
    from opentelemetry import trace

    inactive = (trace.ProxyTracerProvider, trace.NoOpTracerProvider)
    if tracer_provider is not None:
        active = not isinstance(tracer_provider, inactive)
        return lambda: active
    get_provider = trace.get_tracer_provider
    installed = False

    def enabled() -> bool:
        nonlocal installed
        if not installed:
            installed = not isinstance(get_provider(), inactive)
        return installed

    return enabled


def trace_ids() -> tuple[str, str] | None:
    """``(trace_id, span_id)`` in hex of the current span, or ``None`` outside a sampled trace.

    Cheap when OpenTelemetry was never imported (returns ``None`` at once).

    Example: ``ids = trace_ids(); log.info("step", trace_id=ids[0] if ids else None)``
    """
    if "opentelemetry.trace" not in sys.modules:
        return None
    from opentelemetry import trace

    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")


# --- metadata carriers for the propagators ---------------------------------------------------


class MetadataGetter:
    """An OpenTelemetry ``Getter`` over grpc invocation metadata (``(key, value)`` pairs)."""

    __slots__ = ()

    def get(self, carrier: Any, key: str) -> list[str] | None:
        values = [v for k, v in carrier if k == key and isinstance(v, str)]
        return values or None

    def keys(self, carrier: Any) -> list[str]:
        return [k for k, _ in carrier]


METADATA_GETTER = MetadataGetter()


# --- network attributes -----------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def peer_attributes(peer: str) -> Mapping[str, str | int]:
    """``network.*`` attributes of a grpc peer string (``ipv4:127.0.0.1:5555``, ``unix:/s``)."""
    scheme, _, rest = peer.partition(":")
    if scheme in ("unix", "unix-abstract"):
        return {"network.transport": "unix", "network.peer.address": rest}
    if scheme not in ("ipv4", "ipv6"):
        return {}
    host, port = _split_host_port(unquote(rest))
    attributes: dict[str, str | int] = {
        "network.transport": "tcp",
        "network.peer.address": host,
    }
    if port is not None:
        attributes["network.peer.port"] = port
    return attributes


@functools.lru_cache(maxsize=256)
def target_attributes(target: str) -> Mapping[str, str | int]:
    """``server.address`` / ``server.port`` of a channel target (``dns:///host:443``, ``h:p``)."""
    scheme, _, rest = target.partition(":")
    if scheme in ("unix", "unix-abstract"):
        return {"server.address": rest.removeprefix("//")}
    if scheme in ("ipv4", "ipv6"):
        rest = rest.partition(",")[0]  # the first of a list of addresses
    elif scheme in ("dns", "xds", "passthrough") and rest.startswith("//"):
        rest = rest[2:].partition("/")[2]  # scheme://[authority]/host:port
    else:
        rest = target
    host, port = _split_host_port(rest)
    attributes: dict[str, str | int] = {"server.address": host}
    if port is not None:
        attributes["server.port"] = port
    return attributes


def _split_host_port(hostport: str) -> tuple[str, int | None]:
    if hostport.startswith("["):  # [::1]:5555
        host, _, tail = hostport[1:].partition("]")
        port = tail.removeprefix(":")
    elif hostport.count(":") == 1:
        host, _, port = hostport.partition(":")
    else:  # bare host or bare IPv6 address
        host, port = hostport, ""
    return host, int(port) if port.isdigit() else None


# --- configuration from OTEL_* ----------------------------------------------------------------


def configure_from_env(
    service_name: str, env: Mapping[str, str], *, install: bool = True
) -> TracerProvider | None:
    """Build an SDK ``TracerProvider`` from the ``OTEL_*`` variables in ``env``; ``None`` if off.

    Tracing is on when ``OTEL_TRACES_EXPORTER`` names exporters (``otlp``, ``console``,
    comma-separated) or an ``OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT`` is set (OTLP then);
    ``OTEL_SDK_DISABLED=true`` or ``OTEL_TRACES_EXPORTER=none`` turn it off. Also read:
    ``OTEL_SERVICE_NAME`` (over ``service_name``), ``OTEL_RESOURCE_ATTRIBUTES``,
    ``OTEL_TRACES_SAMPLER`` / ``_ARG``, ``OTEL_PROPAGATORS`` (``tracecontext``, ``baggage``,
    ``none``), ``OTEL_BSP_*`` and ``OTEL_EXPORTER_OTLP_[TRACES_]{ENDPOINT,HEADERS,INSECURE,
    TIMEOUT,COMPRESSION,PROTOCOL}``. With ``install`` the provider (and propagators) become the
    global ones. Raises ``ValueError`` for values it does not understand, ``ImportError`` when
    the ``tracing`` extra is missing.

    Example::

        provider = configure_from_env("shop", {"OTEL_TRACES_EXPORTER": "console"})
    """
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    exporters = _exporter_names(env)
    if not exporters:
        return None
    require_opentelemetry()
    from opentelemetry.sdk.trace import TracerProvider

    propagator = _propagator(env)
    provider = TracerProvider(sampler=_sampler(env), resource=_resource(service_name, env))
    for name in exporters:
        provider.add_span_processor(_processor(_exporter(name, env), env))
    if install:
        from opentelemetry import propagate, trace

        trace.set_tracer_provider(provider)
        if propagator is not None:
            propagate.set_global_textmap(propagator)
    return provider


def _exporter_names(env: Mapping[str, str]) -> list[str]:
    raw = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if not raw:
        endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get(
            "OTEL_EXPORTER_OTLP_ENDPOINT"
        )
        return ["otlp"] if endpoint else []
    names = [n.strip() for n in raw.split(",") if n.strip()]
    if "none" in names:
        return []
    unknown = sorted(set(names) - {"otlp", "console"})
    if unknown:
        raise ValueError(f"OTEL_TRACES_EXPORTER: unsupported {', '.join(unknown)}")
    return names


def _resource(service_name: str, env: Mapping[str, str]) -> Any:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.version import __version__ as sdk_version

    attributes: dict[str, str] = {
        "telemetry.sdk.language": "python",
        "telemetry.sdk.name": "opentelemetry",
        "telemetry.sdk.version": sdk_version,
    }
    attributes.update(_pairs(env.get("OTEL_RESOURCE_ATTRIBUTES", ""), "OTEL_RESOURCE_ATTRIBUTES"))
    attributes["service.name"] = env.get("OTEL_SERVICE_NAME") or service_name
    return Resource(attributes)


def _pairs(raw: str, variable: str) -> Iterator[tuple[str, str]]:
    """``k1=v1,k2=v2`` (values percent-decoded), as in the resource and headers variables."""
    for item in raw.split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{variable}: expected key=value, got {item.strip()!r}")
        yield key.strip(), unquote(value.strip())


def _sampler(env: Mapping[str, str]) -> Sampler:
    from opentelemetry.sdk.trace import sampling

    name = env.get("OTEL_TRACES_SAMPLER", "parentbased_always_on").strip().lower()
    ratio = _ratio(env.get("OTEL_TRACES_SAMPLER_ARG", ""))
    samplers: dict[str, Sampler] = {
        "always_on": sampling.ALWAYS_ON,
        "always_off": sampling.ALWAYS_OFF,
        "traceidratio": sampling.TraceIdRatioBased(ratio),
        "parentbased_always_on": sampling.ParentBased(sampling.ALWAYS_ON),
        "parentbased_always_off": sampling.ParentBased(sampling.ALWAYS_OFF),
        "parentbased_traceidratio": sampling.ParentBased(sampling.TraceIdRatioBased(ratio)),
    }
    try:
        return samplers[name]
    except KeyError:
        raise ValueError(f"OTEL_TRACES_SAMPLER: unsupported {name!r}") from None


def _ratio(raw: str) -> float:
    if not raw.strip():
        return 1.0
    try:
        ratio = float(raw)
    except ValueError:
        ratio = -1.0
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"OTEL_TRACES_SAMPLER_ARG: expected a ratio in [0, 1], got {raw!r}")
    return ratio


def _processor(exporter: SpanExporter, env: Mapping[str, str]) -> SpanProcessor:
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    return BatchSpanProcessor(
        exporter,
        max_queue_size=_int(env, "OTEL_BSP_MAX_QUEUE_SIZE", 2048),
        schedule_delay_millis=_int(env, "OTEL_BSP_SCHEDULE_DELAY", 5000),
        max_export_batch_size=_int(env, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512),
        export_timeout_millis=_int(env, "OTEL_BSP_EXPORT_TIMEOUT", 30000),
    )


def _int(env: Mapping[str, str], variable: str, default: int) -> int:
    return _parse_int(env.get(variable, ""), variable, default)


def _parse_int(raw: str, variable: str, default: int) -> int:
    raw = raw.strip()
    if not raw:
        return default
    if not raw.isdigit():
        raise ValueError(f"{variable}: expected a non-negative integer, got {raw!r}")
    return int(raw)


def _exporter(name: str, env: Mapping[str, str]) -> SpanExporter:
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter(service_name=env.get("OTEL_SERVICE_NAME"))
    return _otlp_exporter(env)


def _otlp(env: Mapping[str, str], option: str) -> str:
    """``OTEL_EXPORTER_OTLP_TRACES_<option>`` or else ``OTEL_EXPORTER_OTLP_<option>``."""
    value = env.get(f"OTEL_EXPORTER_OTLP_TRACES_{option}") or env.get(
        f"OTEL_EXPORTER_OTLP_{option}"
    )
    return (value or "").strip()


def _otlp_exporter(env: Mapping[str, str]) -> SpanExporter:
    protocol = _otlp(env, "PROTOCOL") or "grpc"
    if protocol != "grpc":
        raise ValueError(f"OTEL_EXPORTER_OTLP_PROTOCOL: only 'grpc' is supported, not {protocol!r}")
    try:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    except ImportError as exc:
        raise ImportError(INSTALL_HINT) from exc
    endpoint = _otlp(env, "ENDPOINT") or "http://localhost:4317"
    insecure = _otlp(env, "INSECURE").lower()
    compression = _otlp(env, "COMPRESSION").lower()
    if compression not in ("", "none", "gzip"):
        raise ValueError(f"OTEL_EXPORTER_OTLP_COMPRESSION: unsupported {compression!r}")
    timeout_ms = _parse_int(_otlp(env, "TIMEOUT"), "OTEL_EXPORTER_OTLP_TIMEOUT", 10000)
    return OTLPSpanExporter(
        endpoint=endpoint,
        insecure=(insecure == "true") if insecure else not endpoint.startswith("https:"),
        headers=dict(_pairs(_otlp(env, "HEADERS"), "OTEL_EXPORTER_OTLP_HEADERS")),
        timeout=timeout_ms / 1000,
        compression=grpc.Compression.Gzip if compression == "gzip" else None,
    )


def _propagator(env: Mapping[str, str]) -> TextMapPropagator | None:
    """The propagators ``OTEL_PROPAGATORS`` names, or ``None`` to keep the API default."""
    raw = env.get("OTEL_PROPAGATORS", "").strip().lower()
    if not raw:
        return None  # the API default: tracecontext,baggage
    from opentelemetry.baggage.propagation import W3CBaggagePropagator
    from opentelemetry.propagators.composite import CompositePropagator
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    known: dict[str, type[TextMapPropagator]] = {
        "tracecontext": TraceContextTextMapPropagator,
        "baggage": W3CBaggagePropagator,
    }
    names = [n.strip() for n in raw.split(",") if n.strip() and n.strip() != "none"]
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise ValueError(f"OTEL_PROPAGATORS: unsupported {', '.join(unknown)}")
    return CompositePropagator([known[n]() for n in names])
