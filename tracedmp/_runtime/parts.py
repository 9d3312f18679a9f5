"""Which parts of a large pickle weigh the most: paths, types and bytes, from the bytes alone.

Imported only once a pickle reaches the size threshold (``parts_threshold``).  The pickle that
was sent is walked once, opcode by opcode, on a symbolic stack (nothing is unpickled, imported
or pickled again): every object the receiver would build knows the span of bytes that built it,
and the containers, instances, bound methods, partials and cloudpickle functions among them know
their large members by key, index or attribute name.  The largest of those, named from the
sender's point of view (``args[0]``, ``func.__self__.weights``, ``items[3]``,
``target.__self__.dataset``), go into the record: no contents, only paths, type names and sizes.

Cost: linear in the number of opcodes (a large ``bytes`` or array is one opcode, skipped over;
a run of numbers in a list is skipped at C speed).  A walk stops once it has taken twice as long
as the pickling did (2 ms at least; the record then says ``parts_partial``), and each call site
pays for its first few large pickles and then only for a sample that keeps the walks under a
fiftieth of the time spent pickling there (``Budget``; the others say ``parts_skipped``).
"""

from __future__ import annotations

import heapq
import pickletools
import re
import struct
from time import perf_counter_ns

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Dict, List, Optional, Tuple

__all__ = ["Budget", "attribute_parts", "fields", "forget_budgets", "select", "walk"]

TOP = 5  # parts per record
OPS_BUDGET = 2_000_000  # opcodes one walk reads at most, whatever its time budget
FIRST = 4  # large pickles of a call site always attributed
SHARE = 0.02  # then only while the walks stay under this share of the site's pickling time

_unpack_q = struct.Struct("<Q").unpack_from
_unpack_i = struct.Struct("<i").unpack_from
_unpack_I = struct.Struct("<I").unpack_from
_unpack_H = struct.Struct("<H").unpack_from

# Opcode classes (the dispatch below tests the common ones first).
(_LEAF, _DATA, _MEMOIZE, _PUT, _GET, _MARK, _MANY, _APPEND, _SETITEM, _EMPTY, _TUPLEN,
 _FROMMARK, _STACK_GLOBAL, _GLOBAL, _REDUCE, _NEWOBJ, _BUILD, _SKIP, _STOP, _POP, _POP_MARK,
 _DUP, _LINE_LEAF, _INST, _PERSID, _EXT, _UNKNOWN, _BUFFER) = range(28)

# For each opcode byte: its class, the bytes of a fixed-size argument, or for data opcodes the
# size of the length prefix (negative: a signed 4-byte length).
_CLASS = [_UNKNOWN] * 256
_ARG = [0] * 256
_NAME = [""] * 256


def _setup() -> None:
    fixed = {"uint1": 1, "uint2": 2, "int4": 4, "uint4": 4, "uint8": 8, "float8": 8}
    prefix = {"string1": 1, "bytes1": 1, "unicodestring1": 1, "long1": 1, "string4": -4,
              "bytes4": 4, "unicodestring4": 4, "long4": -4, "bytes8": 8, "unicodestring8": 8,
              "bytearray8": 8}
    by_name = {
        "MEMOIZE": _MEMOIZE, "PUT": _PUT, "BINPUT": _PUT, "LONG_BINPUT": _PUT,
        "GET": _GET, "BINGET": _GET, "LONG_BINGET": _GET, "MARK": _MARK,
        "APPENDS": _MANY, "SETITEMS": _MANY, "ADDITEMS": _MANY, "APPEND": _APPEND,
        "SETITEM": _SETITEM, "EMPTY_LIST": _EMPTY, "EMPTY_DICT": _EMPTY, "EMPTY_SET": _EMPTY,
        "TUPLE1": _TUPLEN, "TUPLE2": _TUPLEN, "TUPLE3": _TUPLEN, "TUPLE": _FROMMARK,
        "LIST": _FROMMARK, "DICT": _FROMMARK, "FROZENSET": _FROMMARK,
        "STACK_GLOBAL": _STACK_GLOBAL, "GLOBAL": _GLOBAL, "REDUCE": _REDUCE,
        "NEWOBJ": _NEWOBJ, "NEWOBJ_EX": _NEWOBJ, "BUILD": _BUILD, "PROTO": _SKIP,
        "FRAME": _SKIP, "STOP": _STOP, "POP": _POP, "POP_MARK": _POP_MARK, "DUP": _DUP,
        "INST": _INST, "OBJ": _INST, "PERSID": _PERSID, "BINPERSID": _PERSID,
        "EXT1": _EXT, "EXT2": _EXT, "EXT4": _EXT,
        "NEXT_BUFFER": _LEAF, "READONLY_BUFFER": _SKIP,
    }
    for op in pickletools.opcodes:
        code = ord(op.code)
        _NAME[code] = op.name
        arg = op.arg
        if op.name in by_name:
            _CLASS[code] = by_name[op.name]
            _ARG[code] = fixed.get(arg.name, 0) if arg is not None else 0
            if arg is not None and arg.n < 0:  # newline-terminated (protocol 0 GET/PUT/...)
                _ARG[code] = -100
        elif arg is None:
            _CLASS[code] = _LEAF  # NONE, NEWTRUE, NEWFALSE, EMPTY_TUPLE
        elif arg.name in fixed:
            _CLASS[code] = _LEAF
            _ARG[code] = fixed[arg.name]
        elif arg.name in prefix:
            _CLASS[code] = _DATA
            _ARG[code] = prefix[arg.name]
        else:
            _CLASS[code] = _LINE_LEAF  # protocol 0: INT, LONG, FLOAT, STRING, UNICODE


_setup()
# The walk of a pickle whose out-of-band buffers are known: NEXT_BUFFER makes a node.
_CLASS_OOB = list(_CLASS)
_CLASS_OOB[0x97] = _BUFFER
# Runs of one fixed-size number opcode (a list of floats or ints is pickled as batches of them).
_RUNS: List[Any] = [None] * 256
for _code in (0x47, 0x4A, 0x4B, 0x4D):  # BINFLOAT, BININT, BININT1, BININT2
    _RUNS[_code] = re.compile(b"(?:%s[\\x00-\\xff]{%d})+"
                              % (re.escape(bytes([_code])), _ARG[_code])).match
_TUPLE1, _TUPLE2, _TUPLE3 = 0x85, 0x86, 0x87


# An object the pickle builds, as a list (a list costs a quarter of a __slots__ instance to
# make, and a large pickle of small objects makes one per dict, list or tuple):
START, END, KIND, TYPE, KIDS, COUNT, REF, ITEMS, EXTRA = range(9)
# kind: list tuple dict set global obj method partial func cell code data call
# kids: [(path fragment, node, raw key or index)]; count: items so far (the next index);
# ref: "module.qualname" of a global, or a method's name; items: a tuple's own items.
Node = list


def _node(start: int, end: int, kind: str, type_: str) -> list:
    return [start, end, kind, type_, None, 0, None, None, None]


def _size(node: list) -> int:
    return node[1] - node[0]


_CONTAINER_TYPES = {0x5D: ("list", "builtins.list"), 0x7D: ("dict", "builtins.dict"),
                    0x8F: ("set", "builtins.set")}
_FROM_MARK_TYPES = {0x74: ("tuple", "builtins.tuple"), 0x6C: ("list", "builtins.list"),
                    0x64: ("dict", "builtins.dict"), 0x91: ("set", "builtins.frozenset")}
_DATA_TYPES = {0x8C: "builtins.str", 0x58: "builtins.str", 0x8D: "builtins.str",
               0x43: "builtins.bytes", 0x42: "builtins.bytes", 0x8E: "builtins.bytes",
               0x96: "builtins.bytearray", 0x55: "builtins.str", 0x54: "builtins.str",
               0x8A: "builtins.int", 0x8B: "builtins.int"}
# Reconstructors whose first argument is the class of the object they build.
_CLASS_FIRST = {"copyreg._reconstructor", "copyreg.__newobj__", "copyreg.__newobj_ex__",
                "numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct"}
# Objects whose inside is their own business: a part, never a path further down.
_OPAQUE = {"numpy.core.numeric._frombuffer": "numpy.ndarray",
           "numpy._core.numeric._frombuffer": "numpy.ndarray",
           "numpy.ndarray": "numpy.ndarray",
           "torch._utils._rebuild_tensor_v2": "torch.Tensor",
           "torch._utils._rebuild_tensor": "torch.Tensor",
           "torch._utils._rebuild_parameter": "torch.nn.parameter.Parameter",
           "torch.storage._load_from_bytes": "torch.storage.UntypedStorage"}
_OPAQUE_TYPES = set(_OPAQUE.values())


def walk(data: Any, min_part: int, ops_budget: int = OPS_BUDGET,
         deadline_ns: int = 0, oob: Optional[list] = None) -> Tuple[Optional[list], bool]:
    """The pickle's root object (a node), and whether the walk read it all (False: the budget
    of opcodes, or of time with ``deadline_ns``, ran out first).  ``oob``: a list that gets a
    node for each out-of-band buffer (``NEXT_BUFFER``), in order; every member of containers
    is then kept, however small in the stream."""
    # Read in place (a copy of a 10 MB pickle costs more than walking it).
    buf = data if isinstance(data, (bytes, memoryview)) else memoryview(data)
    n = len(buf)
    classes, widths, runs = _CLASS if oob is None else _CLASS_OOB, _ARG, _RUNS
    vals: list = []  # per stack slot: a node, or ~pos of a small leaf (its opcode's position)
    starts: List[int] = []  # per stack slot: where the bytes that made it start
    push, push_start = vals.append, starts.append
    marks: List[int] = []  # stack depth of each open MARK, and where it is
    mark_pos: List[int] = []
    memo: Dict[int, Any] = {}
    keep = min_part  # members of a container kept: of many, the large ones only
    if oob is not None:
        memo[-1] = oob  # for _rare (no memo index is negative)
        keep = 0  # sizes are known only once the buffers are counted in: every member
    next_memo = 0
    pos = 0
    left = ops_budget
    check = 4096  # opcodes between looks at the clock
    # Opcode classes as locals: a comparison with a local costs less than with a global.
    LEAF, DATA, MEMOIZE, GET, MARK, MANY, EMPTY, TUPLEN, APPEND, SETITEM = (
        _LEAF, _DATA, _MEMOIZE, _GET, _MARK, _MANY, _EMPTY, _TUPLEN, _APPEND, _SETITEM)
    root = None
    while pos < n:
        code = buf[pos]
        cls = classes[code]
        check -= 1
        if not check:
            check = 4096
            left -= 4096
            if left <= 0 or (deadline_ns and perf_counter_ns() > deadline_ns):
                return _cut(vals, n, marks, mark_pos, buf, min_part), False
        if cls == LEAF:
            step = 1 + widths[code]
            # A batch of numbers (a list of floats or ints): skip the run at C speed.
            if pos + step < n and buf[pos + step] == code and marks and runs[code] is not None:
                end = runs[code](buf, pos).end()
                vals.extend(range(~pos, ~end, -step))
                starts.extend(range(pos, end, step))
                pos = end
                continue
            push(~pos)
            push_start(pos)
            pos += step
        elif cls == MEMOIZE:
            top = vals[-1]
            memo[next_memo] = top
            next_memo += 1
            pos += 1
            if type(top) is list:
                top[1] = pos  # END
        elif cls == DATA:
            width = widths[code]
            if width == 1:
                end = pos + 2 + buf[pos + 1]
            elif width == 8:
                end = pos + 9 + _unpack_q(buf, pos + 1)[0]
            elif width == 4:
                end = pos + 5 + _unpack_I(buf, pos + 1)[0]
            else:
                end = pos + 5 + _unpack_i(buf, pos + 1)[0]
            if end - pos >= min_part:
                push(_node(pos, end, "data", _DATA_TYPES.get(code, "builtins.bytes")))
            else:
                push(~pos)
            push_start(pos)
            pos = end
        elif cls == GET:
            width = widths[code]
            if width == 1:  # BINGET, inline: a call for each would cost the walk ~20 %
                index = buf[pos + 1]
            else:
                index, width = _memo_index(buf, pos, width)
            push(memo.get(index, ~pos))
            push_start(pos)
            pos += 1 + width
        elif cls == MARK:
            marks.append(len(vals))
            mark_pos.append(pos)
            pos += 1
        elif cls == MANY or cls == APPEND or cls == SETITEM:
            pos += 1
            if cls == MANY:
                at = marks.pop()
                mark_pos.pop()
            else:
                at = len(vals) - (1 if cls == APPEND else 2)
            items = vals[at:]
            del vals[at:], starts[at:]
            target = vals[-1]
            if type(target) is list:
                _add_items(target, items, buf, keep)
                target[1] = pos  # END
        elif cls == EMPTY:
            kind, type_ = _CONTAINER_TYPES[code]
            push([pos, pos + 1, kind, type_, None, 0, None, None, None])
            push_start(pos)
            pos += 1
        elif cls == TUPLEN:
            pos += 1
            at = len(vals) - (code - _TUPLE1 + 1)
            start = starts[at]
            items = vals[at:]
            node = [start, pos, "tuple", "builtins.tuple", None, 0, None, items, None]
            _add_items(node, items, buf, keep)
            del vals[at:], starts[at:]
            push(node)
            push_start(start)
        else:
            pos = _rare(cls, code, buf, pos, vals, starts, marks, mark_pos, memo, keep)
            if pos < 0:
                if pos == -1:  # STOP
                    root = vals[-1] if vals else None
                    break
                return _cut(vals, n, marks, mark_pos, buf, min_part), False
    if type(root) is not list:
        return None, True
    return root, True


def _rare(cls: int, code: int, buf: Any, pos: int, vals: list, starts: List[int],
          marks: List[int], mark_pos: List[int], memo: Dict[int, Any], min_part: int) -> int:
    """The opcodes that come once per object rather than once per item; the new position,
    -1 at STOP, -2 for an opcode this walk does not know."""
    if cls == _STACK_GLOBAL:
        name, module = vals.pop(), vals.pop()
        starts.pop()
        start = starts.pop()
        node = _node(start, pos + 1, "global", "global")
        node[REF] = f"{_text(buf, module)}.{_text(buf, name)}"
        vals.append(node)
        starts.append(start)
        return pos + 1
    if cls == _REDUCE:
        call_args, func = vals.pop(), vals.pop()
        starts.pop()
        start = starts.pop()
        vals.append(_reduce(func, call_args, start, pos + 1, buf))
        starts.append(start)
        return pos + 1
    if cls == _BUILD:
        state = vals.pop()
        starts.pop()
        target = vals[-1]
        if type(target) is list:
            _build(target, state)
            target[END] = pos + 1
        return pos + 1
    if cls == _FROMMARK:
        at = marks.pop()
        start = mark_pos.pop()
        kind, type_ = _FROM_MARK_TYPES[code]
        node = _node(start, pos + 1, kind, type_)
        items = vals[at:]
        if kind == "tuple" and len(items) <= 32:
            node[ITEMS] = items
        _add_items(node, items, buf, min_part)
        del vals[at:], starts[at:]
        vals.append(node)
        starts.append(start)
        return pos + 1
    if cls == _NEWOBJ:
        if code == 0x92:  # NEWOBJ_EX: cls, args, kwargs
            vals.pop()
            starts.pop()
        vals.pop()
        starts.pop()
        cls_node = vals.pop()
        start = starts.pop()
        vals.append(_node(start, pos + 1, "obj", _ref(cls_node) or "object"))
        starts.append(start)
        return pos + 1
    if cls == _PUT:
        index, width = _memo_index(buf, pos, _ARG[code])
        if vals:
            memo[index] = vals[-1]
        return pos + 1 + width
    if cls == _SKIP:
        return pos + 1 + _ARG[code]
    if cls == _POP:
        if vals:
            vals.pop()
            starts.pop()
        return pos + 1
    if cls == _STOP:
        return -1
    if cls == _POP_MARK:
        at = marks.pop()
        mark_pos.pop()
        del vals[at:], starts[at:]
        return pos + 1
    if cls == _DUP:
        vals.append(vals[-1])
        starts.append(pos)
        return pos + 1
    if cls == _GLOBAL:
        end = _line_end(buf, _line_end(buf, pos + 1))
        module, _, qual = str(buf[pos + 1:end - 1], "utf-8", "replace").partition("\n")
        node = _node(pos, end, "global", "global")
        node[REF] = f"{module}.{qual}"
        vals.append(node)
        starts.append(pos)
        return end
    if cls == _LINE_LEAF:
        end = _line_end(buf, pos + 1)
        if end - pos >= min_part and code in (0x53, 0x56):  # STRING, UNICODE
            vals.append(_node(pos, end, "data", "builtins.str"))
        else:
            vals.append(~pos)
        starts.append(pos)
        return end
    if cls == _INST:
        if code == 0x69:  # INST: module and name on two lines
            end = _line_end(buf, _line_end(buf, pos + 1))
            ref: Optional[str] = str(buf[pos + 1:end - 1], "utf-8", "replace").replace("\n", ".")
        else:
            end = pos + 1
            ref = None
        at = marks.pop()
        start = mark_pos.pop()
        items = vals[at:]
        del vals[at:], starts[at:]
        if ref is None and items:
            ref = _ref(items[0])
        vals.append(_node(start, end, "obj", ref or "object"))
        starts.append(start)
        return end
    if cls == _PERSID:
        if code == 0x51:  # BINPERSID
            vals.pop()
            start = starts.pop()
            end = pos + 1
        else:
            start = pos
            end = _line_end(buf, pos + 1)
        vals.append(~start)
        starts.append(start)
        return end
    if cls == _BUFFER:  # an out-of-band buffer: sized afterwards (_with_buffers)
        node = _node(pos, pos + 1, "data", "pickle.PickleBuffer")
        memo[-1].append(node)
        vals.append(node)
        starts.append(pos)
        return pos + 1
    if cls == _EXT:
        width = {0x82: 1, 0x83: 2, 0x84: 4}[code]
        node = _node(pos, pos + 1 + width, "global", "global")
        node[REF] = "copyreg extension"
        vals.append(node)
        starts.append(pos)
        return pos + 1 + width
    return -2  # an opcode from a protocol this walk does not know: stop, say so


def _cut(vals: list, n: int, marks: List[int], mark_pos: List[int], buf: Any,
         min_part: int) -> Optional[list]:
    """Out of budget: finish what is still open as the opcodes to come most likely would
    (a dict's pending item, an instance's state, a bound method's self, each open batch), and
    let the open objects run to the end of the pickle."""
    # Only what is still being built runs to the end: each object that receives the parts
    # folded below (the path down to where the walk stopped), and the top-level one; how far
    # the innermost open object would have gone is not known (it keeps what was read).
    floor = marks[-1] if marks else 0
    while True:
        if len(vals) - floor >= 3 and type(vals[-3]) is list and vals[-3][KIND] == "dict" \
                and _is_str(buf, vals[-2]):
            _add_items(vals[-3], vals[-2:], buf, min_part)  # SETITEM
            del vals[-2:]
            vals[-1][END] = n
        elif len(vals) - floor >= 2 and type(vals[-2]) is list and type(vals[-1]) is list \
                and vals[-2][KIND] == "obj" and vals[-1][KIND] in ("dict", "tuple"):
            _build(vals[-2], vals.pop())  # BUILD
            vals[-1][END] = n
        elif len(vals) - floor >= 2 and type(vals[-1]) is list \
                and _ref(vals[-2]) == "builtins.getattr":  # getattr(self, name): name unread
            method = _node(vals[-2][START], n, "method", "builtins.method")
            _relabel(method, ".__self__", vals.pop())
            vals[-1] = method
        elif marks:  # the open batch goes to the container below it, or is a tuple
            at, start = marks.pop(), mark_pos.pop()
            items = vals[at:]
            del vals[at:]
            below = vals[-1] if vals else None
            if type(below) is list and below[KIND] in ("list", "dict", "set"):
                _add_items(below, items, buf, min_part)
                below[END] = n
            else:
                node = _node(start, n, "tuple", "builtins.tuple")
                node[ITEMS] = items
                _add_items(node, items, buf, min_part)
                vals.append(node)
            floor = marks[-1] if marks else 0
        else:
            break
    root = vals[0] if vals and type(vals[0]) is list else None
    if root is not None:
        root[END] = n
    return root


def _line_end(buf: Any, pos: int) -> int:
    """Just past the newline that ends the line from ``pos`` (protocol 0 opcodes)."""
    found = _NEWLINE.search(buf, pos)
    if found is None:
        raise ValueError("pickle ends inside a line")
    return found.end()


_NEWLINE = re.compile(b"\n")


def _memo_index(buf: Any, pos: int, width: int) -> Tuple[int, int]:
    """The memo index a GET or PUT at ``pos`` names, and how many bytes its argument takes
    (``width``: its opcode's ``_ARG``; a protocol 0 one is a line)."""
    if width == 1:
        return buf[pos + 1], 1
    if width == 4:
        return _unpack_I(buf, pos + 1)[0], 4
    return _line_int(buf, pos)


def _line_int(buf: Any, pos: int) -> Tuple[int, int]:
    end = _line_end(buf, pos + 1) - 1
    return int(bytes(buf[pos + 1:end])), end - pos


def _text(buf: Any, val: Any) -> str:
    """The text of a small str leaf (~pos of its opcode), or '?'."""
    if type(val) is list:
        return val[REF] or "?"
    if type(val) is not int or val >= 0:
        return "?"
    pos = ~val
    code = buf[pos]
    try:
        if code == 0x8C:  # SHORT_BINUNICODE
            return str(buf[pos + 2:pos + 2 + buf[pos + 1]], "utf-8", "surrogatepass")
        if code == 0x58:  # BINUNICODE
            length = _unpack_I(buf, pos + 1)[0]
            return str(buf[pos + 5:pos + 5 + length][:200], "utf-8", "surrogatepass")
        if code == 0x55:  # SHORT_BINSTRING
            return str(buf[pos + 2:pos + 2 + buf[pos + 1]], "latin-1")
    except UnicodeDecodeError:
        pass
    return "?"


def _is_str(buf: Any, val: Any) -> bool:
    return type(val) is int and val < 0 and buf[~val] in (0x8C, 0x58, 0x55)


def _leaf_repr(buf: Any, val: Any) -> str:
    """A dict key shown in a path: a string or a small int; anything else as '...'."""
    if type(val) is not int or val >= 0:
        return "..."
    pos = ~val
    code = buf[pos]
    if code in (0x8C, 0x58, 0x55):
        return repr(_text(buf, val))
    if code == 0x4B:  # BININT1
        return str(buf[pos + 1])
    if code == 0x4D:  # BININT2
        return str(_unpack_H(buf, pos + 1)[0])
    if code == 0x4A:  # BININT
        return str(_unpack_i(buf, pos + 1)[0])
    if code == 0x4E:
        return "None"
    if code in (0x88, 0x89):
        return "True" if code == 0x88 else "False"
    return "..."


def _ref(val: Any) -> Optional[str]:
    return val[REF] if type(val) is list and val[KIND] == "global" else None


def _add_items(target: list, items: list, buf: Any, min_part: int) -> None:
    # Few items (a call's arguments, a task's fields, attributes) are all kept, so that the
    # structure around a large part can be named; of many, only the large ones.
    kind = target[KIND]
    if len(items) > 16:
        if list not in set(map(type, items)):  # a batch of small leaves (at C speed)
            if kind != "dict":
                target[COUNT] += len(items)
            return
        floor = min_part
    else:
        floor = 0
    if kind == "dict":
        for i in range(1, len(items), 2):
            value = items[i]
            if type(value) is list and value[END] - value[START] >= floor:
                key = items[i - 1]
                _kid(target, f"[{_leaf_repr(buf, key)}]", value,
                     _text(buf, key) if _is_str(buf, key) else None)
        return
    base = target[COUNT]
    target[COUNT] = base + len(items)
    for i, value in enumerate(items):
        if type(value) is list and value[END] - value[START] >= floor:
            _kid(target, f"[{base + i}]" if kind != "set" else "{...}", value, base + i)


def _kid(parent: list, fragment: str, node: list, key: Any) -> None:
    kids = parent[KIDS]
    if kids is None:
        parent[KIDS] = [(fragment, node, key)]
    else:
        kids.append((fragment, node, key))


def _relabel(target: list, fragment: str, node: list, key: Any = None) -> None:
    kids = target[KIDS]
    entry = (fragment, node, fragment.lstrip(".") if key is None else key)
    if kids is None:
        target[KIDS] = [entry]
    else:
        kids.append(entry)


def _reduce(func: Any, call_args: Any, start: int, end: int, buf: Any) -> list:
    ref = _ref(func)
    args: Any = call_args[ITEMS] if type(call_args) is list and call_args[ITEMS] is not None \
        else ()
    if ref is None:
        if type(func) is list and func[KIND] == "code_type":  # a code object cloudpickle sent
            node = _node(start, end, "code", "types.CodeType")
            if len(args) >= 2 and type(args[-2]) is list and args[-2][ITEMS] is not None:
                node[EXTRA] = {"freevars": [_text(buf, v) for v in args[-2][ITEMS]]}
            return node
        return _node(start, end, "call", "object")
    if ref in _CLASS_FIRST and args:
        type_ = _ref(args[0]) or "object"
        return _node(start, end, "data" if type_ in _OPAQUE_TYPES else "obj", type_)
    opaque = _OPAQUE.get(ref)
    if opaque is not None:
        node = _node(start, end, "data", opaque)
        if opaque == "torch.Tensor" and len(args) >= 3:
            node[EXTRA] = _tensor_view(buf, args)
        return node
    if ref == "builtins.getattr" and len(args) == 2:  # a bound method: getattr(self, name)
        node = _node(start, end, "method", "builtins.method")
        node[REF] = _text(buf, args[1])
        if type(args[0]) is list:
            _relabel(node, ".__self__", args[0])
        return node
    if ref == "multiprocessing.reduction._rebuild_partial" and len(args) == 3:
        node = _node(start, end, "partial", "functools.partial")
        for fragment, value in zip((".func", ".args", ".keywords"), args):
            if type(value) is list:
                _relabel(node, fragment, value)
        return node
    if ref == "functools.partial":
        return _node(start, end, "partial", "functools.partial")  # the state follows (BUILD)
    if ref == "dask._expr.Expr._reconstruct" and len(args) >= 3:
        # A Dask expression (a graph a client sends): (its type, *operands, token, cache)
        node = _node(start, end, "obj", _ref(args[0]) or "object")
        for i, value in enumerate(args[1:-2]):
            if type(value) is list:
                _relabel(node, f".operands[{i}]", value, i)
        return node
    if ref.startswith("cloudpickle."):
        what = ref.rsplit(".", 1)[-1]
        if what == "_builtin_type":
            name = _text(buf, args[0]) if args else "?"
            node = _node(start, end, "code_type" if name == "CodeType" else "global", "global")
            node[REF] = f"types.{name}"
            return node
        if what == "_make_function":
            node = _node(start, end, "func", "builtins.function")
            if args and type(args[0]) is list and args[0][EXTRA]:
                node[EXTRA] = dict(args[0][EXTRA])
            return node
        if what in ("_make_cell", "_make_empty_cell"):
            node = _node(start, end, "cell", "builtins.cell")
            if args and type(args[0]) is list:
                _relabel(node, "", args[0], 0)
            return node
        if what == "_function_setstate" and len(args) == 2:
            target, state = args
            if type(target) is list and type(state) is list:
                _function_state(target, state, buf)
                target[END] = end
            return _node(start, end, "call", "object")
        if what.startswith("_make_skeleton"):
            return _node(start, end, "obj", "builtins.type")
        if what == "_class_setstate":
            return _node(start, end, "call", "object")
    # A class called with arguments (collections.OrderedDict, a __reduce__ of one's own...).
    return _node(start, end, "obj", ref)


def _tensor_view(buf: Any, args: Any) -> Optional[Dict[str, Any]]:
    # _rebuild_tensor_v2(storage, offset, size, stride, ...): the storage travels whole.
    storage, shape = args[0], args[2]
    if type(storage) is not list or type(shape) is not list or shape[ITEMS] is None:
        return None
    numel = 1
    for v in shape[ITEMS]:
        dim = _leaf_repr(buf, v)
        if not dim.isdigit():
            return None
        numel *= int(dim)
    return {"storage_bytes": storage[END] - storage[START], "numel": numel}


def _build(target: list, state: Any) -> None:
    if type(state) is not list or target[KIND] in ("data", "code"):
        return
    kind = state[KIND]
    if target[KIND] == "partial":
        if kind == "tuple":
            names = {0: ".func", 1: ".args", 2: ".keywords", 3: ".__dict__"}
            for _, node, key in state[KIDS] or ():
                if key in names:
                    _relabel(target, names[key], node)
        return
    if kind == "dict":
        _attributes(target, state)
    elif kind == "tuple" and state[KIDS]:  # (dict, slots), or a __getstate__'s own tuple
        kids = state[KIDS]
        if any(node[KIND] == "dict" for _, node, _ in kids) and state[COUNT] == 2:
            for _, node, _ in kids:
                if node[KIND] == "dict":
                    _attributes(target, node)
        else:
            for fragment, node, key in kids:
                _relabel(target, f".__getstate__(){fragment}", node, key)
    else:
        _relabel(target, ".__getstate__()", state)


def _attributes(target: list, state: list) -> None:
    for fragment, node, key in state[KIDS] or ():
        _relabel(target, f".{key}" if isinstance(key, str) else f".__dict__{fragment}", node,
                 key)


def _function_state(func: list, state: list, buf: Any) -> None:
    # cloudpickle's (state, slotstate): the slots hold __closure__, __globals__, __defaults__...
    if state[KIND] != "tuple" or not state[KIDS]:
        return
    freevars = (func[EXTRA] or {}).get("freevars") or []
    for _, part, _ in state[KIDS]:
        for _, node, key in part[KIDS] or ():
            if key == "__closure__":
                for cell_fragment, cell, index in node[KIDS] or ():
                    inner = cell[KIDS][0][1] if cell[KIDS] else cell
                    _relabel(func, f".__closure__{cell_fragment}", inner)
                    if isinstance(index, int) and index < len(freevars):
                        inner[EXTRA] = dict(inner[EXTRA] or {}, captured=freevars[index])
            elif key == "__globals__":
                for global_fragment, value, name in node[KIDS] or ():
                    _relabel(func, f".__globals__{global_fragment}", value, name)
            elif isinstance(key, str) and key != "_cloudpickle_submodules":
                _relabel(func, f".{key}", node)


# -- naming the parts from the sender's point of view -------------------------------------------

def _members(node: Optional[list]) -> list:
    return (node[KIDS] or []) if node is not None else []


def _member(node: Optional[list], key: Any) -> Optional[list]:
    for _, kid, k in _members(node):
        if k == key:
            return kid
    return None


def _top(root: list, channel: str, part: Optional[str]) -> List[Tuple[str, list]]:
    """The members of the top-level object, named as the program knows them."""
    kind = root[KIND]
    kids = _members(root)
    by_key = {key: node for _, node, key in kids}
    if channel == "pool.task" and kind == "tuple":
        # (job, i, func, args, kwds); map and starmap send (mapstar, (func, chunk), {})
        items: Any = root[ITEMS] or ()
        if len(items) > 2 and _ref(items[2]) in _MAPSTAR:
            wrapped = _member(by_key.get(3), 0)  # mapstar's one argument: (func, chunk)
            pair = {k: v for _, v, k in _members(wrapped)} if wrapped is not None else {}
            return [(name, pair[k]) for k, name in ((0, "func"), (1, "items")) if k in pair]
        return [(name, by_key[k]) for k, name in ((2, "func"), (3, "args"), (4, "kwargs"))
                if k in by_key]
    if channel == "executor.call" and kind == "obj":
        fn, args, kwargs = by_key.get("fn"), by_key.get("args"), by_key.get("kwargs")
        out = []
        if fn is not None and fn[KIND] == "partial":  # executor.map: partial(_process_chunk, fn)
            fn_args = {k: v for _, v, k in _members(fn)}.get("args")
            user = {k: v for _, v, k in _members(fn_args)}.get(0) if fn_args else None
            if user is not None:
                out.append(("func", user))
            chunk = {k: v for _, v, k in _members(args)}.get(0) if args is not None else None
            if chunk is not None:
                out.append(("items", chunk))
            return out
        return [(name, node) for name, node in (("func", fn), ("args", args),
                                                 ("kwargs", kwargs)) if node is not None]
    if channel == "process" and part == "process_object" and kind == "obj":
        names = {"_target": "target", "_args": "args", "_kwargs": "kwargs"}
        return [(names.get(key, f"process.{key}"), node) for _, node, key in kids]
    if channel == "manager" and kind == "tuple":
        if root[COUNT] == 4:  # a request: (id, method, args, kwds)
            return [(name, by_key[k]) for k, name in ((2, "args"), (3, "kwargs")) if k in by_key]
        if root[COUNT] == 2 and 1 in by_key:  # a reply: ('#RETURN', result)
            return [("result", by_key[1])]
    if channel == "pool.result" and kind == "tuple" and 2 in by_key:
        value = {k: v for _, v, k in _members(by_key[2])}.get(1)  # (job, i, (ok, value))
        if value is not None:
            return [("result", value)]
    if channel == "executor.result" and kind == "obj":
        return [(str(key), node) for _, node, key in kids]
    if channel == "process" and part == "preparation_data":
        return [(f"preparation_data{fragment}", node) for fragment, node, _ in kids]
    return [(f"obj{fragment}", node) for fragment, node, _ in kids]  # a queue's, a pipe's


# Channels whose top-level object is the transport's own (a task tuple, a call item).
_NAMED_ROOTS = ("pool.task", "pool.result", "executor.call", "executor.result", "manager",
                "process")
_MAPSTAR = ("multiprocessing.pool.mapstar", "multiprocessing.pool.starmapstar")


def select(root: list, channel: str, part: Optional[str], min_part: int,
           top: int = TOP) -> List[Dict[str, Any]]:
    """The ``top`` largest parts; a part that is nearly all one member gives way to it."""
    found: List[Tuple[int, str, list]] = []
    stack = [(path, node, 0) for path, node in reversed(_top(root, channel, part))]
    seen = set()
    while stack:
        path, node, depth = stack.pop()
        size = node[END] - node[START]
        if size < min_part or id(node) in seen or depth > 24:
            continue
        seen.add(id(node))
        kids: Any = node[KIDS] or ()
        if len(kids) > top:  # a member outside the largest few cannot make the top either
            keep = set(map(id, heapq.nlargest(top, kids, key=_kid_size)))
            kids = [kid for kid in kids if id(kid) in keep]  # in stream order still
        biggest = _kid_size(kids[0]) if len(kids) == 1 else max(map(_kid_size, kids), default=0)
        # A part that is nearly all one member gives way to it; an instance a method carries
        # is named even then (func.__self__ is what the trap is called).
        if biggest < 0.95 * size and node[KIND] != "method" or path.endswith(".__self__"):
            found.append((size, path, node))
        start, end = node[START], node[END]
        # Pushed last member first, so members are taken in stream order, depth first: a
        # member the pickle refers to again (a memo reference) is named where it first appeared.
        for fragment, kid, _ in reversed(kids):
            if kid[START] >= start and kid[END] <= end:
                stack.append((path + fragment, kid, depth + 1))
    if not found and root[END] - root[START] >= min_part and channel not in _NAMED_ROOTS:
        found.append((root[END] - root[START], "obj", root))  # no large member: the object
    found.sort(key=lambda f: (-f[0], f[1]))
    out = []
    for size, path, node in found[:top]:
        entry: Dict[str, Any] = {"path": path, "type": node[TYPE], "size": size}
        if node[KIND] == "method" and node[REF]:
            entry["method"] = node[REF]
        extra = node[EXTRA]
        if extra:
            for key in ("captured", "storage_bytes", "numel"):
                if key in extra:
                    entry[key] = extra[key]
        out.append(entry)
    return out


def _kid_size(kid: Tuple[str, list, Any]) -> int:
    return kid[1][END] - kid[1][START]


def attribute_parts(data: Any, channel: str, part: Optional[str] = None, top: int = TOP,
                    deadline_ns: int = 0, buffers: Optional[List[int]] = None
                    ) -> Tuple[List[Dict[str, Any]], bool]:
    """The largest parts of the pickle ``data`` sent on ``channel``, and whether it was read
    whole (False: the walk's budget ran out, and the open parts' sizes are upper bounds).
    ``buffers``: the sizes of the pickle's out-of-band buffers (protocol 5), in order, each
    then a part of the object it sits in."""
    if buffers and len(data) <= OOB_INBAND:
        min_part = max(256, (len(data) + sum(buffers)) >> 9)
        oob: list = []
        root, whole = walk(data, min_part, deadline_ns=deadline_ns, oob=oob)
        if root is None:
            return [], whole
        _with_buffers(root, oob, buffers)
        return select(root, channel, part, min_part, top), whole
    min_part = max(256, len(data) >> 9)
    root, whole = walk(data, min_part, deadline_ns=deadline_ns)
    if root is None:
        return [], whole
    return select(root, channel, part, min_part, top), whole


# A pickle with out-of-band buffers is walked keeping every member, so only up to this size
# (a Dask graph that embeds arrays: their data is out of band, the stream small).
OOB_INBAND = 256 * 1024


def _with_buffers(root: list, oob: list, buffers: List[int]) -> None:
    """Spans as if each out-of-band buffer sat in the stream where its NEXT_BUFFER is."""
    from bisect import bisect_left

    positions = [node[START] for node in oob]
    before = [0]
    for size in buffers[:len(positions)]:
        before.append(before[-1] + size)
    while len(before) <= len(positions):
        before.append(before[-1])

    def moved(pos: int) -> int:
        return pos + before[bisect_left(positions, pos)]

    seen = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        node[START], node[END] = moved(node[START]), moved(node[END])
        for _, kid, _ in node[KIDS] or ():
            stack.append(kid)
        for item in node[ITEMS] or ():
            if type(item) is list:
                stack.append(item)


class Budget:
    """One call site's: its first ``FIRST`` large pickles are walked, then only while the
    walks have cost under ``SHARE`` of the time it spent pickling them."""

    __slots__ = ("walked", "walk_ns", "pickle_ns")

    def __init__(self) -> None:
        self.walked = 0
        self.walk_ns = 0
        self.pickle_ns = 0

    def take(self, pickle_ns: int) -> bool:
        self.pickle_ns += pickle_ns
        return self.walked < FIRST or self.walk_ns < SHARE * self.pickle_ns

    def spent(self, ns: int) -> None:
        self.walked += 1
        self.walk_ns += ns


# Call site (keys that are not the program's objects) -> its budget; bounded.
_budgets: Dict[Any, Budget] = {}
_BUDGETS_LIMIT = 4096
PER_WALK = 2.0  # one walk may take this many times what the pickling took...
PER_WALK_FLOOR_NS = 2_000_000  # ...or 2 ms, whichever is more


def fields(data: Any, channel: str, part: Optional[str], pickle_ns: int,
           site: Any, buffers: Optional[List[int]] = None) -> Dict[str, Any]:
    """The record fields for a pickle at or above the threshold: ``parts`` (and
    ``parts_partial`` if the walk was cut short), or ``parts_skipped`` when the call site's
    budget says to leave this one out."""
    budget = _budgets.get(site)
    if budget is None:
        if len(_budgets) >= _BUDGETS_LIMIT:
            _budgets.clear()
        budget = _budgets[site] = Budget()
    if not budget.take(pickle_ns):
        return {"parts_skipped": "budget"}
    start = perf_counter_ns()
    deadline = start + max(PER_WALK_FLOOR_NS, int(PER_WALK * pickle_ns))
    try:
        found, whole = attribute_parts(data, channel, part, deadline_ns=deadline,
                                       buffers=buffers)
    finally:
        budget.spent(perf_counter_ns() - start)
    out: Dict[str, Any] = {"parts": found}
    if not whole:
        out["parts_partial"] = True
    return out


def forget_budgets() -> None:
    """After a fork and when tracing restarts: every call site starts afresh."""
    _budgets.clear()
