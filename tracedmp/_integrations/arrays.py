"""What joblib did with each numpy array it pickled: a memmap reference, or a copy.

joblib hands loky's queues (and its own Pool's) reducers for ``numpy.ndarray`` and
``numpy.memmap``: above ``max_nbytes`` an array is written to a file once and travels as a
reference to it (``load_temporary_memmap``, or ``_strided_from_memmap`` for an array already
backed by a file); below, it travels as a nested pickle (``loads, (bytes,)``).  ``watch`` wraps
those reducers for one pickle, so its record can say, for each array: its size, the bytes it
took in the pickle, whether it went as a memmap, and whether its file was written for it.  The
reducers' results are passed on untouched: the pickle is the same.
"""

from __future__ import annotations

import pickle

TYPE_CHECKING = False  # typing costs milliseconds to import, in every spawned child
if TYPE_CHECKING:
    from typing import Any, Dict, List, Optional, Tuple

__all__ = ["MAX_ARRAYS", "Notes", "watch"]

MAX_ARRAYS = 16  # per record; a last entry {"truncated": n} counts the rest


class Notes:
    __slots__ = ("arrays", "left_out")

    def __init__(self) -> None:
        self.arrays: List[Dict[str, Any]] = []
        self.left_out = 0


def watch(reducers: Any) -> Tuple[Any, Optional[Notes]]:
    """``reducers`` with its numpy reducers wrapped, and the notes they will fill; as given
    (and None) when it has none."""
    # A queue pickles every message with the same reducers: which of them are numpy's is
    # looked up once per dict (by id; checked, since an id outlives its dict).
    numpy_types = _numpy_types.get(id(reducers))
    if numpy_types is None or not all(t in reducers for t in numpy_types):
        try:
            numpy_types = tuple(t for t in reducers
                                if getattr(t, "__module__", "").startswith("numpy"))
        except TypeError:
            return reducers, None
        if len(_numpy_types) >= 64:
            _numpy_types.clear()
        _numpy_types[id(reducers)] = numpy_types
    if not numpy_types:
        return reducers, None
    notes = Notes()
    wrapped = dict(reducers)
    for t in numpy_types:
        wrapped[t] = _Watch(reducers[t], notes)
    return wrapped, notes


_numpy_types: Dict[int, Tuple[type, ...]] = {}
_dtype_names: Dict[Any, str] = {}


class _Watch:
    """Calls joblib's array reducer and notes what it made of the array."""

    __slots__ = ("reduce", "notes")

    def __init__(self, reduce: Any, notes: Notes) -> None:
        self.reduce = reduce
        self.notes = notes

    def __call__(self, a: Any) -> Any:
        known = getattr(self.reduce, "_temporary_memmaped_filenames", None)
        before = len(known) if isinstance(known, set) else None
        reduced = self.reduce(a)
        try:
            self._note(a, reduced, known, before)
        except Exception:  # a reducer of a shape we do not know: no note, same pickle
            pass
        return reduced

    def _note(self, a: Any, reduced: Any, known: Any, before: Optional[int]) -> None:
        notes = self.notes
        if len(notes.arrays) >= MAX_ARRAYS:
            notes.left_out += 1
            if notes.left_out == 1:
                notes.arrays.append({"truncated": 1})
            else:
                notes.arrays[-1]["truncated"] = notes.left_out
            return
        rebuild, args = reduced[0], reduced[1]
        dtype = a.dtype
        name = _dtype_names.get(dtype)
        if name is None:  # str(dtype) takes ~20 us (numpy 2): once per dtype
            if len(_dtype_names) >= 64:
                _dtype_names.clear()
            name = _dtype_names[dtype] = str(dtype)
        entry: Dict[str, Any] = {"nbytes": int(a.nbytes), "shape": [int(n) for n in a.shape],
                                 "dtype": name}
        if rebuild is pickle.loads and args and isinstance(args[0], (bytes, bytearray)):
            entry["sent_as"] = "copy"
            entry["size"] = len(args[0])  # the nested pickle joblib made: its bytes, exactly
        else:
            entry["sent_as"] = "memmap"
            # The reference: the reduction's arguments (file name, mode, offsets) pickled alone,
            # within a few bytes of what they take in the message.
            entry["size"] = len(pickle.dumps(args, pickle.HIGHEST_PROTOCOL))
            entry["written"] = before is not None and len(known) > before
        notes.arrays.append(entry)
