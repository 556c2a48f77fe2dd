"""What a ``%%durable`` cell shows and changes besides its names: what it printed and
displayed (kept while it runs, shown again on restore), its figures, and the global state
(random generators, working directory, matplotlib's rcParams)."""

from __future__ import annotations

import io
import os
import pickle
import sys
import warnings
from typing import Any

#: The most printed text recorded per stream of a cell.
MAX_PRINTED = 1 << 20


def replay_outputs(out: dict[str, Any]) -> None:
    """Print and display again what the cell showed, in the order it showed it."""
    done = {"stdout": 0, "stderr": 0}

    def print_up_to(at: tuple[int, int], flush: bool = True) -> None:
        for stream, upto in zip(("stdout", "stderr"), at, strict=True):
            text = out.get(stream) or ""
            if upto > done[stream]:
                getattr(sys, stream).write(text[done[stream] : upto])
                if flush:  # before a display: a kernel's flush waits for its I/O thread
                    getattr(sys, stream).flush()
                done[stream] = upto

    for shown in out.get("displays", ()):
        data, metadata = shown[0], shown[1]
        print_up_to(shown[2] if len(shown) > 2 else (0, 0))
        _publish(data, metadata)
    print_up_to((len(out.get("stdout") or ""), len(out.get("stderr") or "")), flush=False)


class Tee:
    """While open, what is written to stdout and stderr still shows, and is kept."""

    def __enter__(self) -> Tee:
        self.saved = {"stdout": sys.stdout, "stderr": sys.stderr}
        self.kept = {k: io.StringIO() for k in self.saved}
        for k, stream in self.saved.items():
            setattr(sys, k, _TeeStream(stream, self.kept[k]))
        return self

    def __exit__(self, *exc: Any) -> None:
        for k, stream in self.saved.items():
            setattr(sys, k, stream)

    def sizes(self) -> tuple[int, int]:
        """How much has been written to stdout and stderr so far."""
        return self.kept["stdout"].tell(), self.kept["stderr"].tell()

    def text(self, stream: str) -> str:
        text = self.kept[stream].getvalue()
        return text if len(text) <= MAX_PRINTED else text[:MAX_PRINTED] + "\n[… more not recorded]\n"


class _TeeStream:
    def __init__(self, target: Any, copy: io.StringIO) -> None:
        self._target, self._copy = target, copy

    def write(self, text: str) -> int:
        self._copy.write(text)
        return self._target.write(text)

    def __getattr__(self, name: str) -> Any:  # flush, isatty, encoding… of the real stream
        return getattr(self._target, name)


_WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


class Displays:
    """While open, what the cell displays (images, HTML, widgets' text forms) still shows,
    and its mime bundles are kept to show again on restore: a display updated through its
    display id (a progress line, a timeline's final copy) is kept as it ended."""

    def __init__(self, shell: Any, printed: Tee | None = None) -> None:
        self.pub = getattr(shell, "display_pub", None)
        self.printed = printed
        #: [display id or None, data (None for a widget: its model dies with the kernel),
        #: metadata, (characters printed to stdout, stderr before it)]
        self._shown: list[list[Any]] = []

    @property
    def kept(self) -> list[tuple[dict[str, Any], dict[str, Any], tuple[int, int]]]:
        return [(data, meta, at) for _, data, meta, at in self._shown if data and data != {"text/plain": ""}]

    def _note(self, data: dict[str, Any], metadata: dict[str, Any] | None, kwargs: dict[str, Any]) -> None:
        did = (kwargs.get("transient") or {}).get("display_id")
        kept = None if _WIDGET_VIEW in data else dict(data)
        if kwargs.get("update") and did is not None:
            for entry in self._shown:
                if entry[0] == did:
                    entry[1], entry[2] = kept, dict(metadata or {})
            return
        at = self.printed.sizes() if self.printed is not None else (0, 0)
        self._shown.append([did, kept, dict(metadata or {}), at])

    def __enter__(self) -> Displays:
        if self.pub is not None:
            original = self.pub.publish

            def publish(data: dict[str, Any], metadata: dict[str, Any] | None = None,
                        *args: Any, **kwargs: Any) -> Any:  # fmt: skip
                self._note(data, metadata, kwargs)
                return original(data, metadata, *args, **kwargs)

            self.pub.publish = publish
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.pub is not None:
            self.pub.__dict__.pop("publish", None)

    def flush_figures(self) -> None:
        """Draw the cell's inline matplotlib figures now, inside the cell, so that they are
        kept too (the inline backend would draw them after the cell)."""
        backend = sys.modules.get("matplotlib_inline.backend_inline")
        pyplot = sys.modules.get("matplotlib.pyplot")
        if backend is None or pyplot is None or "inline" not in str(pyplot.get_backend()):
            return
        backend.flush_figures()


def figure_numbers() -> set[int]:
    pyplot = sys.modules.get("matplotlib.pyplot")
    return set(pyplot.get_fignums()) if pyplot is not None else set()


def close_new_figures(before: set[int]) -> None:
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is not None:
        for num in set(pyplot.get_fignums()) - before:
            pyplot.close(num)


def _publish(data: dict[str, Any], metadata: dict[str, Any]) -> None:
    from IPython.display import publish_display_data

    publish_display_data(data, metadata)


def global_state() -> dict[str, Any]:
    """What a cell can change besides its names: the random generators of ``random`` and
    of NumPy, the working directory, matplotlib's rcParams (of the modules imported)."""
    import random

    state: dict[str, Any] = {"random": random.getstate(), "cwd": os.getcwd()}
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        state["numpy.random"] = numpy.random.get_state()
    mpl = sys.modules.get("matplotlib")
    if mpl is not None and hasattr(mpl, "rcParams"):
        # dict.items: the stored values, without RcParams' checks on every read (slow)
        state["rcParams"] = {k: v for k, v in dict.items(mpl.rcParams) if k != "backend"}
    return state


def set_global_state(state: dict[str, Any]) -> None:
    """Put back what `global_state` recorded (what a restored cell had changed)."""
    import random

    if "random" in state:
        random.setstate(state["random"])
    if "cwd" in state and os.path.isdir(state["cwd"]):
        os.chdir(state["cwd"])
    if "numpy.random" in state:
        import numpy

        numpy.random.set_state(state["numpy.random"])
    if "rcParams" in state:
        import matplotlib

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            matplotlib.rcParams.update(state["rcParams"])


def dumped(value: Any) -> bytes | None:
    try:
        return pickle.dumps(value, protocol=5)
    except Exception:  # noqa: BLE001  (cannot compare: take it as changed)
        return None
