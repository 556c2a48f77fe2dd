"""The objects `@workflow`, `@step` and `@transaction` return."""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Callable
from typing import Any

from ..errors import DurableUsageError
from ..settings import check_durability
from ._tracebacks import awaited, hide_engine
from .hashing import code_hash, function_name
from .identity import check_name
from .timeouts import check_timeout

_MISSING = object()


class _Durable:
    kind = "step"

    def __init__(self, fn: Callable[..., Any], name: str | None) -> None:
        if not callable(fn):
            raise TypeError(f"{type(self).__name__.lower()} decorates a function, got {fn!r}")
        self.fn = fn
        self.name = check_name(name or function_name(fn))
        self.is_async = inspect.iscoroutinefunction(inspect.unwrap(fn))
        self._code_hash: str | None = None
        functools.update_wrapper(self, fn)

    @property
    def code_hash(self) -> str:
        """Digest of the function's code (comments, formatting and docstring aside)."""
        if self._code_hash is None:
            self._code_hash = code_hash(self.fn)
        return self._code_hash

    def __repr__(self) -> str:
        return f"<durablenb {self.kind} {self.name!r}>"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError  # each kind calls its own protocol

    def __get__(self, obj: Any, objtype: Any = None) -> Any:
        if obj is None:
            return self
        return functools.partial(self.__call__, obj)

    def __reduce__(self) -> Any:
        module = getattr(self.fn, "__module__", None)
        qualname = getattr(self.fn, "__qualname__", "")
        if module and module != "__main__" and "<locals>" not in qualname:
            try:
                found: Any = importlib.import_module(module)
                for part in qualname.split("."):
                    found = getattr(found, part)
                if found is self:
                    return (_resolve, (module, qualname))
            except (ImportError, AttributeError):
                pass
        return (_rebuild, (type(self), self.fn, self.__dict__.copy()))


def _resolve(module: str, qualname: str) -> Any:
    found: Any = importlib.import_module(module)
    for part in qualname.split("."):
        found = getattr(found, part)
    return found


def _rebuild(cls: type[_Durable], fn: Callable[..., Any], state: dict[str, Any]) -> Any:
    obj = cls.__new__(cls)
    obj.__dict__.update(state)
    obj.fn = fn
    return obj


class Step(_Durable):
    """A function whose output (or exception) is recorded when it runs inside a workflow.

    Outside a workflow it is a plain call. *retries* more attempts are made after an
    exception that is an instance of *retry_on*, waiting *interval* × *backoff*ⁿ seconds.
    *timeout*: seconds after which an attempt is interrupted with `StepTimeoutError`.
    """

    kind = "step"

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        retries: int = 0,
        backoff: float = 2.0,
        interval: float = 1.0,
        max_interval: float = 60.0,
        retry_on: type[BaseException] | tuple[type[BaseException], ...] = Exception,
        timeout: float | None = None,
    ) -> None:
        super().__init__(fn, name)
        self.timeout = check_timeout(timeout, f"{self.kind} {self.name!r}")
        if retries < 0:
            raise ValueError("retries must be >= 0")
        if backoff < 1.0 or interval < 0:
            raise ValueError("backoff must be >= 1 and interval >= 0")
        self.retries = int(retries)
        self.backoff = float(backoff)
        self.interval = float(interval)
        self.max_interval = float(max_interval)
        self.retry_on = retry_on
        from .runtime import register_step

        register_step(self)

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number *attempt* (1-based)."""
        return min(self.interval * self.backoff ** (attempt - 1), self.max_interval)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        __tracebackhide__ = True
        from .kinds import call_step, call_step_async

        if self.is_async:
            return awaited(call_step_async(self, args, kwargs))
        try:
            return call_step(self, args, kwargs)
        except BaseException as exc:
            raise hide_engine(exc)  # noqa: B904  (the same exception, its own frames only)


class Transaction(Step):
    """A step whose body and record commit in one database transaction: exactly once."""

    kind = "transaction"

    def __init__(self, fn: Callable[..., Any], **options: Any) -> None:
        super().__init__(fn, **options)
        if self.is_async:
            raise DurableUsageError(
                f"transaction {self.name!r} is an async function: its body runs on a blocking "
                "psycopg connection (dnb.connection()), so write it as a plain def; async "
                "workflows call it like any step"
            )

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        __tracebackhide__ = True
        from .kinds import call_transaction

        try:
            return call_transaction(self, args, kwargs)
        except BaseException as exc:
            raise hide_engine(exc)  # noqa: B904


class Workflow(_Durable):
    """A deterministic function whose steps are checkpointed; rerunning it resumes it.

    *on_change*: what a rerun does when the code changed since the recorded run —
    ``"fork"`` (re-run from the first changed step), ``"error"`` or ``"ignore"``.
    *on_busy*: ``"error"`` raises `WorkflowBusyError` when another executor runs the same
    workflow; ``"wait"`` waits up to *wait_timeout* seconds for it.
    *durability*: ``"full"`` or ``"kernel"``; None takes the calling workflow's, else the
    connection's (`durablenb.settings.Settings.durability`).
    *on_failure*: what calling it again does once it finished with an error — ``"retry"``
    (run again from its first failed step, the failed run kept as an archive) or
    ``"replay"`` (raise the recorded error).
    *timeout*: seconds from its first start after which it is cancelled
    (`WorkflowTimeoutError`); the deadline is recorded, so it holds across a resume.
    """

    kind = "workflow"
    #: Whether the workflows it calls start as top-level workflows (with their own default
    #: ids) instead of inline children: true of a notebook cell run as a workflow, so that a
    #: workflow is the same whether its cell is ``%%durable`` or not.
    transparent = False
    #: Whether a call usually finds the workflow finished (a notebook cell rerun after a
    #: restart): its record is then read first, before any lock is asked for.
    finished_first = False

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        on_change: str = "fork",
        on_busy: str = "error",
        wait_timeout: float = 3600.0,
        durability: str | None = None,
        on_failure: str = "retry",
        timeout: float | None = None,
    ) -> None:
        super().__init__(fn, name)
        self.timeout = check_timeout(timeout, f"workflow {self.name!r}")
        self.durability = check_durability(durability)
        if on_failure not in ("retry", "replay"):
            raise ValueError(f"on_failure must be 'retry' or 'replay', not {on_failure!r}")
        self.on_failure = on_failure
        if on_change not in ("fork", "error", "ignore"):
            raise ValueError("on_change must be 'fork', 'error' or 'ignore'")
        if on_busy not in ("error", "wait"):
            raise ValueError("on_busy must be 'error' or 'wait'")
        self.on_change = on_change
        self.on_busy = on_busy
        self.wait_timeout = float(wait_timeout)
        from .runtime import register

        register(self)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        __tracebackhide__ = True
        from .replay import call_workflow, call_workflow_async

        if self.is_async:
            return awaited(call_workflow_async(self, args, kwargs))
        try:
            return call_workflow(self, args, kwargs)
        except BaseException as exc:
            raise hide_engine(exc)  # noqa: B904

    # verbs on the decorated object
    def start(self, *args: Any, **kwargs: Any) -> Any:
        """Run in the background; returns a `WorkflowHandle`."""
        from .handles import start

        return start(self, *args, **kwargs)

    def id_for(self, *args: Any, **kwargs: Any) -> str:
        """The workflow id a call with these arguments gets (without an explicit id)."""
        from .identity import args_digest, default_workflow_id

        return default_workflow_id(self.name, args_digest(self.name, args, kwargs), self.notebook())

    def notebook(self) -> str | None:
        """The notebook or script this workflow belongs to: the one running, when the
        workflow is defined there (in ``__main__``); None for workflows of modules."""
        from .runtime import notebook

        return notebook() if getattr(self.fn, "__module__", None) == "__main__" else None

