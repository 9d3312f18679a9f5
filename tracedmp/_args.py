"""Argument types the commands share (``tracedmp explain``, ``report``, ``bench``)."""

from __future__ import annotations

import argparse
import os
import sys

from ._errors import TracedmpError

__all__ = ["evaluate_expression", "positive"]


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be 1 or more")
    return value


def evaluate_expression(expr: str) -> object:
    """Evaluate ``expr``, importing the modules its dotted names start with."""
    import ast
    import importlib

    try:
        tree = ast.parse(expr, mode="eval")
    except SyntaxError as exc:
        raise TracedmpError(f"{expr!r} is neither a file nor a Python expression ({exc.msg}); "
                            "quote it for the shell, e.g. tracedmp explain 'mymod.work'") from None
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    namespace: dict = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            parts = []
            inner: ast.AST = node
            while isinstance(inner, ast.Attribute):
                parts.append(inner.attr)
                inner = inner.value
            if isinstance(inner, ast.Name):
                parts.append(inner.id)
                dotted = list(reversed(parts))
                for i in range(len(dotted), 0, -1):
                    try:
                        importlib.import_module(".".join(dotted[:i]))
                        break
                    except ImportError:
                        continue
        if isinstance(node, ast.Name) and node.id not in namespace:
            try:
                namespace[node.id] = importlib.import_module(node.id)
            except ImportError:
                pass
    try:
        return eval(compile(tree, "<explain>", "eval"), namespace)  # noqa: S307 - the user's own
    except Exception as exc:
        raise TracedmpError(f"evaluating {expr!r} failed: {type(exc).__name__}: {exc}") from None
