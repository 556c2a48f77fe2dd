"""A workflow's inputs: digested first, encoded (a large one written as a blob) only once a
new run needs them."""

from __future__ import annotations

from typing import Any

from .. import codecs
from ..errors import UnserializableArgumentsError
from ..store import Lease, Store
from . import values
from .defs import Workflow

Args = tuple[Any, ...]
Kwargs = dict[str, Any]
#: A new workflow's inputs: encoded, or to encode once its run is known to be new.
Inputs = values.Stored | values.Deferred
#: What `begin` records when the inputs are encoded later.
NO_INPUTS = values.Stored(None, None, None, 0)  # type: ignore[arg-type]


def encode_inputs(store: Store, spec: Workflow, wid: str, args: Args, kwargs: Kwargs) -> values.Stored:
    """The encoded inputs of a new workflow; `UnserializableArgumentsError` before anything runs."""
    try:
        return values.encode_value(store, (tuple(args), dict(kwargs)), (wid, "inputs"), wid)
    except codecs.EncodingError as exc:
        where, cause = _culprit(args, kwargs, exc)
        raise UnserializableArgumentsError(
            f"{where} of workflow {spec.name!r} cannot be recorded: {cause}"
        ) from None


def _culprit(args: Args, kwargs: Kwargs, exc: Exception) -> tuple[str, Exception]:
    """Which argument could not be encoded (``arguments[1]``, ``path=``), and why."""
    named = [(f"arguments[{i}]", a) for i, a in enumerate(args)]
    named += [(f"{k}=", v) for k, v in kwargs.items()]
    for label, value in named:
        try:
            codecs.encode(value)
        except codecs.EncodingError as err:
            return f"argument {label} ({type(value).__module__}.{type(value).__qualname__})", err
    return "the arguments", exc


def inputs_for(store: Store, spec: Workflow, wid: str, args: Args, kwargs: Kwargs) -> Inputs:
    """The inputs of *wid*, encoded now when they are small; large ones (a blob to write)
    are encoded only once a new run is known to need them."""
    if values.estimated_size(args, kwargs) < store.settings.blob_threshold:
        return encode_inputs(store, spec, wid, args, kwargs)
    return values.Deferred(lambda: encode_inputs(store, spec, wid, args, kwargs))


def record_inputs(lease: Lease, deferred: values.Deferred) -> None:
    """Encode *deferred* inputs and record them on the workflow *lease* holds."""
    stored = deferred.encode()
    lease.set_inputs(stored.data, stored.codec, stored.checksum, stored.blob)
