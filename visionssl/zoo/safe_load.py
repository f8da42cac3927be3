"""Reading checkpoint files without running code from them.

``read_checkpoint`` loads with ``torch.load(weights_only=True)``: tensors and plain containers
(dict, OrderedDict, list, tuple, set, str, numbers) only, plus the allow-list of ``safe_globals``.
Each allowed name is there because a real upstream file needs it:

- numpy arrays, dtypes and scalars (``numpy.core.multiarray._reconstruct`` / ``scalar``,
  ``numpy.ndarray``, ``numpy.dtype``, under numpy 1.x and 2.x module names): the ``message_hub``
  section of every checkpoint mmengine writes (mmselfsup 1.x, mmpretrain, since mid-2022), whose
  ``HistoryBuffer`` objects hold the loss / learning-rate history as arrays and whose
  ``runtime_info`` holds numpy floats (the ``eta``).
- ``mmengine.logging.history_buffer.HistoryBuffer``: those ``message_hub['log_scalars']`` values.
  It is mapped to ``HistoryBuffer`` here, an inert stand-in that only stores the pickled state;
  nothing of mmengine is imported or called. From mmengine 0.7.3 on, the state also names the
  class's statistics methods (``HistoryBuffer.min`` ...), pickled as ``getattr(HistoryBuffer,
  'min')``: ``builtins.getattr`` is mapped to a function that resolves only those four names on the
  stand-in, to their names as strings, and refuses anything else.
- ``builtins.bytes``: numpy writes ``bytes()`` for the data of an empty array in protocol-2 pickles
  (what ``torch.save`` uses), e.g. a ``HistoryBuffer`` that never got a value. It is mapped to a
  function that returns ``b""`` for no argument and refuses any argument (``bytes(n)`` would
  allocate n bytes), so empty arrays load and nothing else does.
- ``argparse.Namespace``: DINO's and MAE's training checkpoints keep their command line as
  ``args`` (DINO's ``*_full_checkpoint.pth``, ``main_dino.py``'s and MAE's ``main_pretrain.py``'s
  checkpoints, read by the ``dino`` and ``mae`` formats; the releases the zoo lists hold none). It is
  harmless: attributes only.

None of them runs code when unpickled. Anything else is refused with one line naming the object.

Example:
    >>> import tempfile, torch, numpy as np
    >>> p = tempfile.mkdtemp() + "/w.pt"
    >>> torch.save({"state_dict": {"w": torch.ones(1)}, "eta": np.float64(3.5), "log": np.array([])}, p)
    >>> ckpt = read_checkpoint(p)
    >>> ckpt["state_dict"]["w"].tolist(), float(ckpt["eta"]), ckpt["log"].shape
    ([1.0], 3.5, (0,))
"""

from __future__ import annotations

import argparse
import logging
import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from visionssl.zoo.errors import ZooError

logger = logging.getLogger(__name__)


class HistoryBuffer:
    """Inert stand-in for ``mmengine.logging.history_buffer.HistoryBuffer``: the pickled state as attributes.

    It has ``max_length``, ``_log_history`` and ``_count_history`` (numpy arrays) like the real one,
    and no behaviour.

    Example:
        >>> buf = HistoryBuffer()
        >>> buf.__setstate__({"max_length": 10, "_log_history": [0.5]})
        >>> buf.max_length, buf._log_history
        (10, [0.5])
    """

    pickled_name = "mmengine.logging.history_buffer.HistoryBuffer"
    statistics = ("min", "max", "current", "mean")  # mmengine >= 0.7.3 pickles these as statistics_methods

    def __new__(cls, *args: Any) -> HistoryBuffer:  # noqa: PYI034  (typing.Self needs Python 3.11)
        if args:
            raise _not_allowed(cls.pickled_name, "created with arguments, mmengine writes none")
        return super().__new__(cls)

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict):
            raise _not_allowed(
                self.pickled_name, f"a state of type {type(state).__name__}, not the dict mmengine writes"
            )
        vars(self).update(state)

    def __repr__(self) -> str:
        return f"<stand-in for {self.pickled_name}: {sorted(vars(self))}>"


def _not_allowed(name: str, why: str) -> pickle.UnpicklingError:
    return pickle.UnpicklingError(f"GLOBAL {name} in a form not allowed ({why})")


def _bookkeeping_getattr(*args: Any) -> str:
    """``getattr`` as pickled for a stand-in's methods: the method's name, never a callable."""
    if len(args) == 2 and args[0] is HistoryBuffer and args[1] in HistoryBuffer.statistics:
        return f"{HistoryBuffer.pickled_name}.{args[1]}"
    raise _not_allowed("builtins.getattr", f"only HistoryBuffer.{'/'.join(HistoryBuffer.statistics)} are allowed")


def _empty_bytes(*args: Any) -> bytes:
    """``bytes()`` as numpy pickles an empty array's data; any argument is refused."""
    if args:
        raise _not_allowed(
            "builtins.bytes", "only bytes with no argument, the data of an empty numpy array, is allowed"
        )
    return b""


def safe_globals() -> list[Any]:
    """The names allowed in ``weights_only`` loads beyond torch's defaults (see the module docstring for why).

    Example:
        >>> (HistoryBuffer, "mmengine.logging.history_buffer.HistoryBuffer") in safe_globals()
        True
    """
    import numpy as np

    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    allowed: list[Any] = [argparse.Namespace, np.dtype, np.ndarray, multiarray.scalar, multiarray._reconstruct]
    # files written with numpy 1.x name the module numpy.core.multiarray
    allowed += [
        (multiarray.scalar, "numpy.core.multiarray.scalar"),
        (multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
    ]
    dtypes = getattr(np, "dtypes", None)  # numpy >= 1.25 pickles dtypes as these classes
    if dtypes is not None:
        allowed += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType")]
    allowed += [
        (HistoryBuffer, HistoryBuffer.pickled_name),
        (_bookkeeping_getattr, "builtins.getattr"),
        (_empty_bytes, "builtins.bytes"),
    ]
    return allowed


def read_checkpoint(path: str | os.PathLike, *, unsafe: bool = False) -> Any:
    """Loads a checkpoint file without running code from it (``.safetensors`` or a torch file).

    ``unsafe=True`` first tries the safe load too, and only if that refuses the file falls back to
    full unpickling, which runs whatever code the file holds: use it only for files from a source
    you trust. A class whose module is not installed is then an error naming the module.

    Example:
        >>> import tempfile, torch
        >>> p = tempfile.mkdtemp() + "/w.pt"
        >>> torch.save({"state_dict": {"w": torch.ones(1)}}, p)
        >>> read_checkpoint(p)["state_dict"]["w"].tolist()
        [1.0]
    """
    path = Path(path)
    if is_safetensors(path):
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except Exception as exc:  # safetensors raises its own error types
            raise ZooError(f"cannot read {path} as safetensors (truncated or not a safetensors file): {exc}") from None
    try:
        with torch.serialization.safe_globals(safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if not re.search(r"GLOBAL ([\w.]+)", str(exc)) and "global" not in str(exc).lower():
            raise _damaged(path, exc) from None  # random or damaged bytes, not a refused object
        if unsafe:
            return _read_unsafe(path)
        found = re.search(r"GLOBAL ([\w.]+)(?: in a form not allowed \(([^)]*)\))?", str(exc))
        what = f"the object {found.group(1)!r}" if found else "Python objects other than tensors and plain containers"
        why = (
            f" in a form the allow-list does not accept ({found.group(2)})"
            if found and found.group(2)
            else (", which is not on the allow-list")
        )
        raise ZooError(
            f"refusing to load {path}: it holds {what}{why}; unpickling it could run "
            f"code from the file. If you trust where the file comes from, load it with unsafe=True "
            f"(CLI: --unsafe-load)."
        ) from None
    except OSError as exc:
        raise ZooError(f"cannot read checkpoint {path}: {exc.strerror or exc}") from None
    except Exception as exc:  # noqa: BLE001  damaged bytes make the unpickler fail in many ways (IndexError, ...)
        raise _damaged(path, exc) from None


def _damaged(path: Path, exc: BaseException) -> ZooError:
    lines = [line for line in str(exc).splitlines() if line.strip() and "Check the documentation" not in line]
    last = lines[-1].strip() if lines else type(exc).__name__
    return ZooError(
        f"cannot read checkpoint {path} (truncated, damaged, or not a torch file): {type(exc).__name__}: {last}"
    )


def _read_unsafe(path: Path) -> Any:
    logger.warning("loading %s with full unpickling (unsafe=True): it may run code", path)
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except ModuleNotFoundError as exc:
        raise ZooError(
            f"cannot unpickle {path}: it needs the Python module {exc.name!r}, which is not installed; "
            f"install it to load this file with unsafe=True (--unsafe-load)"
        ) from None
    except (ImportError, AttributeError) as exc:  # the module is there but lacks the class the file names
        raise ZooError(
            f"cannot unpickle {path}: {exc}; the installed package is not the one that wrote the file"
        ) from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as exc:
        raise ZooError(f"cannot read checkpoint {path} (truncated, or not a torch file): {exc}") from None


def is_safetensors(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a ``.safetensors`` file (an export), by its suffix: the one place that asks.

    Example:
        >>> is_safetensors("runs/a/export/a.safetensors"), is_safetensors("runs/a/checkpoints/last.pt")
        (True, False)
    """
    return Path(path).suffix == ".safetensors"
