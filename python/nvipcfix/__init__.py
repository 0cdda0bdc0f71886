"""nvipcfix: correct legacy CUDA IPC for unmodified programs.

The wheel carries ``libnvipcfix.so``, a library that is preloaded
(``LD_PRELOAD``) into GPU programs: ``cudaIpcGetMemHandle`` on a pointer
inside a larger ``cudaMalloc`` block then hands the receiving process that
pointer, not the block's base. The library links no CUDA library (it finds
``libcuda.so.1`` at the first IPC call), so it can be preloaded into any
process, with or without a GPU.

Three ways to use it:

- the ``nvipcfix`` command (also ``python3 -m nvipcfix``):
  ``nvipcfix -- python3 serve.py``, ``nvipcfix doctor``, ``nvipcfix --help``;
- :func:`enable` in a Python program, before it starts its workers: every
  process started after the call gets the library, the calling process
  itself does not;
- :func:`library_path` to build ``LD_PRELOAD`` yourself.

:func:`active` tells whether the library is loaded in this process.
"""

from __future__ import annotations

import os
from typing import Iterator, List, MutableMapping, Optional

__all__ = ["__version__", "library_path", "launcher_path", "enable", "active"]

_HERE = os.path.dirname(os.path.abspath(__file__))
_LIBRARY_NAME = "libnvipcfix.so"


def _read_version() -> str:
    """The release written into the launcher when the wheel was built."""
    try:
        with open(launcher_path(), encoding="utf-8") as launcher:
            for line in launcher:
                if line.startswith("VERSION="):
                    return line.split("=", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def library_path() -> str:
    """Return the absolute path of the ``libnvipcfix.so`` in this package.

    Raises:
        FileNotFoundError: the package was installed without its library.
    """
    path = os.path.join(_HERE, "lib", _LIBRARY_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"nvipcfix: {path} is missing; reinstall the nvipcfix wheel")
    return path


def launcher_path() -> str:
    """Return the path of the ``nvipcfix`` launcher script in this package.

    The ``nvipcfix`` console script runs it; it is a POSIX shell script.
    """
    return os.path.join(_HERE, "bin", "nvipcfix")


def _preload_entries(value: str) -> List[str]:
    """Split an ``LD_PRELOAD`` value as the dynamic loader does (spaces or colons)."""
    return [entry for entry in value.replace(":", " ").split() if entry]


def enable(environ: Optional[MutableMapping[str, str]] = None) -> str:
    """Put the library first in ``LD_PRELOAD`` for every process started after this call.

    Child processes inherit ``LD_PRELOAD`` from ``os.environ``: workers
    that ``subprocess``, ``multiprocessing`` with the ``spawn`` or
    ``forkserver`` start method (``torch.multiprocessing`` spawn), vLLM and
    SGLang start after the call load the library. The calling process itself
    is NOT covered (a library cannot be preloaded into a process that is
    already running), and neither are children forked without exec
    (``multiprocessing``'s ``fork`` method): they have it only if this process
    has it. To cover the whole program, start it with ``nvipcfix -- python3
    program.py`` instead.

    As the ``nvipcfix`` launcher does: entries already in ``LD_PRELOAD`` are
    kept in their order, after this library (which must come before
    libraries that define ``dlsym``, such as HAMi-core); a
    ``libnvipcfix.so`` listed there already (this one or another
    installation's) is dropped, so that only one copy is ever loaded.
    Calling it again changes nothing.

    Args:
        environ: the environment to change; ``os.environ`` by default.

    Returns:
        The ``LD_PRELOAD`` value now in force.
    """
    env: MutableMapping[str, str] = os.environ if environ is None else environ
    others = [
        entry
        for entry in _preload_entries(env.get("LD_PRELOAD", ""))
        if os.path.basename(entry) != _LIBRARY_NAME
    ]
    value = ":".join([library_path(), *others])
    env["LD_PRELOAD"] = value
    return value


def _mapped_files() -> Iterator[str]:
    """The files mapped into this process (Linux ``/proc/self/maps``)."""
    with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
        for line in maps:
            fields = line.split(None, 5)
            if len(fields) == 6 and fields[5].startswith("/"):
                yield fields[5].rstrip("\n")


def active() -> bool:
    """Return whether a ``libnvipcfix.so`` is loaded in this process.

    True when this process was started with the library preloaded (by the
    ``nvipcfix`` command, :func:`enable` in its parent, or ``LD_PRELOAD``).
    It says the library is present, not which ``NVIPCFIX_MODE`` it runs in;
    ``NVIPCFIX_LOG=info`` makes it print its ``active:`` line at the first
    IPC call.
    """
    try:
        return any(os.path.basename(path) == _LIBRARY_NAME for path in _mapped_files())
    except OSError:
        return False


__version__: str = _read_version()
