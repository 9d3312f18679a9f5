"""``tracedmp explain``: what is inside one pickle, as a tree, without unpickling it.

The pickle's opcodes are replayed on a symbolic stack (``pickletools.genops``): every object the
pickle would build becomes a node that knows how many bytes of the pickle it took and whether it
travels by reference (a module and a name the receiver imports) or by value (its contents).

An object the pickle uses again (a memo lookup, ``DUP``) is a small "same as above" node, never
the object a second time: the tree has one node per opcode at most, so however the pickle
shares its objects, explaining it takes time and memory in proportion to its length, and every
byte is counted once.
"""

from __future__ import annotations

import io
import pickletools
from typing import Any, Dict, List, Optional, Tuple

from .reader import printable

__all__ = ["Node", "explain", "explain_bytes", "render_tree"]

_LEAF_TYPES = {
    "int": "int", "long": "int", "float": "float", "str": "str", "bytes": "bytes",
    "bytearray": "bytearray", "bool": "bool", "None": "None",
}
_MEMO_PUT = {"PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"}
_MEMO_GET = {"GET", "BINGET", "LONG_BINGET"}
_LABEL = 200  # characters of a name kept in a label made from it (a pickle's names are its own)


class Node:
    """One object in a pickle."""

    __slots__ = ("kind", "label", "own", "children", "by", "ref", "memo_of", "value", "total",
                 "protocol")

    def __init__(self, kind: str, label: str, own: int = 0,
                 children: Optional[List["Node"]] = None, by: str = "value") -> None:
        self.kind = kind  # what it is: int, str, list, dict, global, call, object, memo...
        self.label = label
        self.own = own  # bytes of the opcodes that made this node itself
        self.children: List[Node] = children or []
        self.by = by  # "reference" or "value"
        self.ref: Optional[str] = None  # module.name for globals
        self.memo_of: Optional[Node] = None
        self.value: Optional[str] = None  # a str leaf's text (module and names of globals)
        self.total = -1  # size, once the tree is complete
        self.protocol: Optional[int] = None  # the root's: the pickle protocol it was written in

    @property
    def size(self) -> int:
        """Bytes of the pickle this object and everything in it took."""
        if self.total >= 0:
            return self.total
        return sum(n.own for n in _nodes(self))

    def as_dict(self) -> Dict[str, Any]:
        d: Dict[str, Any] = {"kind": self.kind, "label": self.label, "size": self.size,
                             "by": self.by}
        if self.ref:
            d["ref"] = self.ref
        if self.children:
            d["children"] = [c.as_dict() for c in self.children]
        if self.protocol is not None:
            d["protocol"] = self.protocol
        return d


def explain(obj: Any, pickler: str = "pickle") -> Node:
    """Pickle ``obj`` as multiprocessing would (or with cloudpickle) and explain the bytes: at
    the protocol the running Python's multiprocessing uses (its default: 5 from 3.14, else 4;
    cloudpickle's own default is the highest), which the tree's last line names."""
    from .._runtime.picklers import dump_untraced

    buf = io.BytesIO()
    dump_untraced(obj, buf, pickler)
    return explain_bytes(buf.getvalue())


def explain_bytes(data: bytes) -> Node:
    """Explain a pickle given as bytes.  Nothing is unpickled or imported."""
    stack: List[Any] = []
    marks: List[int] = []
    memo: Dict[int, Node] = {}
    header = 0
    # Read from bytes, every opcode has a position (None only from a stream without tell()).
    ops: List[Tuple[pickletools.OpcodeInfo, Any, int]] = list(pickletools.genops(data))  # type: ignore[arg-type]
    ends = [pos for _, _, pos in ops[1:]] + [len(data)]
    root: Optional[Node] = None
    next_memo = 0
    pending_mark_bytes: List[int] = []
    protocol = 0  # no PROTO opcode: protocol 0 or 1

    for (op, arg, pos), end in zip(ops, ends):
        n = end - pos
        name = op.name
        if name in ("PROTO", "FRAME"):
            header += n
            if name == "PROTO":
                protocol = arg
        elif name == "STOP":
            header += n
            root = stack.pop() if stack else Node("empty", "(nothing)")
        elif name == "MARK":
            marks.append(len(stack))
            pending_mark_bytes.append(n)
        elif name in _MEMO_PUT:
            index = next_memo if name == "MEMOIZE" else arg
            next_memo = max(next_memo, index + 1) if name == "MEMOIZE" else next_memo
            if stack:
                stack[-1].own += n
                memo[index] = stack[-1]
        elif name in _MEMO_GET:
            stack.append(_same(memo.get(arg), n))
        elif name in ("NONE", "NEWTRUE", "NEWFALSE"):
            stack.append(Node({"NONE": "None"}.get(name, "bool"),
                              {"NONE": "None", "NEWTRUE": "True", "NEWFALSE": "False"}[name], n))
        elif name in ("NEXT_BUFFER", "READONLY_BUFFER"):
            stack.append(Node("buffer", "out-of-band buffer", n))
        elif op.stack_after and op.stack_before == [] and len(op.stack_after) == 1 and \
                op.stack_after[0].name in ("int", "bool", "float", "str", "bytes", "bytearray",
                                            "long"):
            stack.append(_leaf(op.stack_after[0].name, arg, n))
        elif name in ("EMPTY_LIST", "EMPTY_DICT", "EMPTY_SET", "EMPTY_TUPLE"):
            kind = name[6:].lower()
            stack.append(Node(kind, kind, n))
        elif name in ("LIST", "TUPLE", "DICT", "FROZENSET"):
            items = _pop_mark(stack, marks)
            kind = name.lower()
            node = Node(kind, kind, n + pending_mark_bytes.pop())
            node.children = _pairs(items) if kind == "dict" else items
            stack.append(node)
        elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            k = int(name[-1])
            items = stack[-k:]
            del stack[-k:]
            stack.append(Node("tuple", "tuple", n, items))
        elif name == "APPEND":
            item = stack.pop()
            stack[-1].own += n
            stack[-1].children.append(item)
        elif name in ("APPENDS", "ADDITEMS"):
            items = _pop_mark(stack, marks)
            stack[-1].own += n + pending_mark_bytes.pop()
            stack[-1].children.extend(items)
        elif name == "SETITEM":
            value, key = stack.pop(), stack.pop()
            stack[-1].own += n
            stack[-1].children.extend(_pairs([key, value]))
        elif name == "SETITEMS":
            items = _pop_mark(stack, marks)
            stack[-1].own += n + pending_mark_bytes.pop()
            stack[-1].children.extend(_pairs(items))
        elif name == "POP":
            if stack:
                header += n
                stack.pop()
        elif name == "POP_MARK":
            _pop_mark(stack, marks)
            header += n + pending_mark_bytes.pop()
        elif name == "DUP":
            stack.append(_same(stack[-1], n))
        elif name == "GLOBAL":
            module, _, qual = str(arg).partition(" ")
            stack.append(_global(module, qual, n))
        elif name == "STACK_GLOBAL":
            qual_node, module_node = stack.pop(), stack.pop()
            node = _global(_text(module_node), _text(qual_node),
                           n + module_node.size + qual_node.size)
            stack.append(node)
        elif name in ("EXT1", "EXT2", "EXT4"):
            stack.append(Node("global", f"extension code {arg}", n, by="reference"))
        elif name == "REDUCE":
            args = stack.pop()
            func = stack.pop()
            stack.append(_call(func, args, n))
        elif name in ("NEWOBJ", "NEWOBJ_EX"):
            kwargs = stack.pop() if name == "NEWOBJ_EX" else None
            args = stack.pop()
            cls = stack.pop()
            node = Node("object", f"{_name(cls)} instance", n + cls.size,
                        [c for c in (args, kwargs) if c is not None and c.children])
            node.own += sum(c.size for c in (args, kwargs) if c is not None and not c.children)
            stack.append(node)
        elif name == "BUILD":
            state = stack.pop()
            target = stack[-1]
            target.own += n
            _attach_state(target, state)
        elif name in ("INST", "OBJ"):
            items = _pop_mark(stack, marks)
            extra = pending_mark_bytes.pop()
            if name == "OBJ":
                cls, items = items[0], items[1:]
                label = _name(cls)
                own = n + extra + cls.size
            else:
                label = _short(str(arg).replace(" ", "."))
                own = n + extra
            stack.append(Node("object", f"{label} instance", own, items))
        elif name in ("PERSID", "BINPERSID"):
            if name == "BINPERSID":
                stack.pop()
            stack.append(Node("persistent", "persistent reference", n, by="reference"))
        else:  # an opcode a newer protocol added: keep its bytes, say what it was
            stack.append(Node("opcode", name, n))
    if root is None:
        root = Node("empty", "(nothing)")
    root.own += header
    _freeze(root)
    root.protocol = protocol
    return root


def _nodes(root: Node) -> List[Node]:
    """``root`` and everything under it, parents before children, each once (iteratively: a
    pickle may nest deeper than the stack)."""
    out = [root]
    seen = {id(root)}
    i = 0
    while i < len(out):
        for child in out[i].children:
            if id(child) not in seen:
                seen.add(id(child))
                out.append(child)
        i += 1
    return out


def _freeze(root: Node) -> None:
    """Work out every node's size once, children first.

    Replaying the opcodes builds a tree (a reused object is a "same as above" node); should a
    pickle still reach one node twice, the second place gets a reference, so that nothing is
    counted twice and no walk over the tree can loop."""
    order = [root]
    seen = {id(root)}
    i = 0
    while i < len(order):
        children = order[i].children
        for j, child in enumerate(children):
            if id(child) in seen:
                children[j] = ref = _same(child, 0)
                ref.total = 0
            else:
                seen.add(id(child))
                order.append(child)
        i += 1
    for node in reversed(order):
        node.total = node.own + sum(c.total for c in node.children)


def _same(target: Optional[Node], n: int) -> Node:
    """A reference to an object the pickle built before: its bytes, not the object again."""
    if target is not None and target.kind == "memo" and target.memo_of is not None:
        target = target.memo_of
    node = Node("memo", f"(same {_short(target.label) if target else 'object'} as above)", n,
                by="reference")
    node.memo_of = target
    return node


def _short(text: str, limit: int = _LABEL) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _leaf(kind: str, arg: Any, n: int) -> Node:
    kind = _LEAF_TYPES.get(kind, kind)
    if type(arg) is int and arg.bit_length() > 64:
        shown = f"int, {arg.bit_length()} bits"  # repr() refuses ints past 4,300 digits
    elif isinstance(arg, (bytes, bytearray)):
        shown = f"{kind}, {len(arg)} bytes"
    elif isinstance(arg, str):
        shown = repr(arg) if len(arg) <= 40 else repr(arg[:37]) + f"... ({len(arg)} chars)"
    else:
        shown = repr(arg)
    node = Node(kind, shown, n)
    if isinstance(arg, str):
        node.value = arg
    return node


def _text(node: Node) -> str:
    source = node.memo_of if node.kind == "memo" and node.memo_of is not None else node
    return source.value if source.value is not None else source.label


def _global(module: str, qual: str, n: int) -> Node:
    module, qual = _short(module), _short(qual)
    node = Node("global", f"{module}.{qual}", n, by="reference")
    node.ref = f"{module}.{qual}"
    return node


def _name(node: Node) -> str:
    if node.kind == "memo" and node.memo_of is not None:
        node = node.memo_of
    return _short(node.ref or node.label)


def _call(func: Node, args: Node, n: int) -> Node:
    ref = func.ref or ""
    if ref.startswith("cloudpickle.") and ref.endswith("._builtin_type") and args.children:
        # cloudpickle's way to name a type pickle cannot import, e.g. types.CodeType.
        node = Node("cloud_type", f"types.{_short(_text(args.children[0]))}",
                    n + func.size + args.size, by="reference")
        return node
    if func.kind == "cloud_type":
        what = "code object: bytecode, constants and names" if func.label == "types.CodeType" \
            else f"{func.label} object"
        return Node("by_value", what, n + func.size + args.size, by="value")
    if ref.startswith("cloudpickle.") and ref.endswith("_setstate") and len(args.children) == 2:
        # cloudpickle sets a rebuilt function's globals, defaults and closure afterwards: show
        # them under the function they belong to.
        handle, state = args.children
        target = handle.memo_of if handle.kind == "memo" and handle.memo_of else handle
        _attach_state(target, state)
        return Node("setstate", "state", n + func.size + args.own + handle.size)
    if ref.startswith("cloudpickle."):
        # cloudpickle rebuilds a function or class from its parts: the definition travels.
        what = ref.rsplit(".", 1)[-1]
        label = {"_make_function": "function", "_make_skeleton_class": "class",
                 "_make_skeleton_enum": "enum class", "_make_empty_cell": "closure cell",
                 "_make_cell": "closure cell"}.get(what, f"{ref} result")
        return Node("by_value", f"{label} rebuilt by cloudpickle", n + func.size, args.children,
                    by="value")
    if ref in ("copyreg._reconstructor", "copyreg.__newobj__") and args.children:
        cls = args.children[0]
        node = Node("object", f"{_name(cls)} instance", n + func.size + args.own + cls.size,
                    args.children[1:])
        return node
    if ref == "builtins.getattr" and len(args.children) == 2:
        owner, attr = args.children
        # A bound method: its instance is the part a trace names func.__self__.
        label = f"method {_short(_text(attr))}" if owner.kind != "global" \
            else f"getattr(..., {_short(attr.label)})"
        kids = [_labelled(".__self__", owner), attr] if owner.kind != "global" else [owner, attr]
        return Node("call", label, n + func.size + args.own, kids,
                    by="reference" if owner.kind == "global" else "value")
    node = Node("call", f"{_name(func)}(...)", n + func.size + args.own, args.children,
                by="value")
    node.ref = None
    return node


def _attach_state(target: Node, state: Node) -> None:
    # A dict state of string keys reads as attributes (.name, as the trace's parts name them);
    # anything else stays as one child.
    if state.kind == "dict":
        target.own += state.own
        target.children.extend(_as_attributes(state.children))
    elif state.kind == "tuple" and len(state.children) == 2:  # (dict, slots)
        target.own += state.own
        for part in state.children:
            if part.kind == "dict":
                target.own += part.own
                target.children.extend(_as_attributes(part.children))
            elif part.kind != "None":
                target.children.append(part)
            else:
                target.own += part.size
    else:
        target.children.append(_labelled("state", state))


def _pairs(items: List[Node]) -> List[Node]:
    out = []
    for key, value in zip(items[0::2], items[1::2]):
        source = key.memo_of if key.kind == "memo" and key.memo_of is not None else key
        label = f"[{_short(_text(key), 40)!r}]" if source.kind == "str" else \
            f"[{_short(source.label)}]"
        node = _labelled(label, value, key.size)
        node.value = _text(key) if source.kind == "str" else None  # the key, for attributes
        out.append(node)
    return out


def _as_attributes(items: List[Node]) -> List[Node]:
    for item in items:
        if item.kind == "item" and item.value is not None:
            item.label = f".{item.value}"
            if item.value == "__closure__" and item.children:
                _index(item.children[0])
    return items


def _index(node: Node) -> None:
    """Label a tuple's or list's members with their index, as a trace's paths do."""
    node.children = [_labelled(f"[{i}]", c) for i, c in enumerate(node.children)]


def _labelled(label: str, value: Node, extra: int = 0) -> Node:
    node = Node("item", label, extra, [value], by=value.by)
    return node


def _pop_mark(stack: List[Any], marks: List[int]) -> List[Any]:
    at = marks.pop() if marks else 0
    items = stack[at:]
    del stack[at:]
    return items


def _fmt(n: int) -> str:
    return f"{n} B" if n < 10_000 else f"{n / 1000:.1f} KB" if n < 10_000_000 else \
        f"{n / 1e6:.1f} MB"


def render_tree(node: Node, *, depth: int = 8, width: int = 20) -> str:
    """The tree as text: one object a line, its bytes, and how it travels."""
    lines: List[str] = []

    def describe(n: Node) -> str:
        if n.kind == "global":
            if n.ref is None:  # EXT1/2/4: a number copyreg.add_extension gave the name
                return (f"{n.label}  by reference: the receiver finds the name under that code "
                        "in its own copyreg extension registry")
            return (f"{n.ref}  by reference: the receiver imports {n.ref.rsplit('.', 1)[0]!r} "
                    "and looks the name up; the definition does not travel")
        if n.kind == "by_value":
            return f"{n.label}  by value: its definition travels in the pickle"
        if n.kind == "item":
            inner = n.children[0]
            return f"{n.label}: {describe(inner)}" if not inner.children or inner.kind in (
                "global",) else f"{n.label}: {inner.label}"
        return n.label

    def walk(n: Node, prefix: str, last: bool, level: int, is_root: bool) -> None:
        connector = "" if is_root else ("└─ " if last else "├─ ")
        shown = n.children[0] if n.kind == "item" and n.children else n
        text = describe(n)
        lines.append(f"{prefix}{connector}{text}  [{_fmt(n.size)}]")
        kids = shown.children if shown.kind != "global" else []
        if n.kind == "item" and (not shown.children or shown.kind == "global"):
            kids = []
        if not kids:
            return
        child_prefix = prefix if is_root else prefix + ("   " if last else "│  ")
        if level >= depth:
            lines.append(f"{child_prefix}└─ ... {len(kids)} more objects "
                         f"[{_fmt(sum(k.size for k in kids))}]")
            return
        shown_kids = kids[:width]
        hidden = kids[width:]
        for i, kid in enumerate(shown_kids):
            walk(kid, child_prefix, i == len(shown_kids) - 1 and not hidden, level + 1, False)
        if hidden:
            lines.append(f"{child_prefix}└─ ... {len(hidden)} more "
                         f"[{_fmt(sum(k.size for k in hidden))}]")

    walk(node, "", True, 0, True)
    if node.protocol is not None:
        lines.append(f"(pickle protocol {node.protocol})")
    # Names in a pickle are the sender's: none may reach the terminal as a control sequence.
    return "\n".join([printable(line) for line in lines]) + "\n"
