"""Triton's CPU interpreter for the kernel tests: whether it is on (conftest.py turns it on
where there is no GPU), and two of its gaps in Triton 3.6, patched for the tests; the
GPU path never imports this.

- It turns scalar tensors into Python ints with int() on 1-element arrays, which NumPy
  >= 2.4 refuses, so a loop bound taken from a kernel argument raises TypeError.
- It multiplies bfloat16 tiles in tl.dot as their raw uint16 bit patterns
  (triton-lang/triton#11584); the GPU multiplies the values, exactly, into float32.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def patch_interpreter() -> Callable[[], None]:
    """Apply both fixes; returns a function that undoes them."""
    import triton.language as tl
    import triton.runtime.interpreter as interpreter

    patch_tensor, create_dot = interpreter._patch_lang_tensor, interpreter.InterpreterBuilder.create_dot

    def patched_tensor(tensor, scope) -> None:
        patch_tensor(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    def bf16_as_float32(handle):
        if handle.dtype != tl.bfloat16:
            return handle
        return interpreter.TensorHandle((handle.data.astype(np.uint32) << 16).view(np.float32), tl.float32)

    def patched_dot(self, a, b, d, *args):
        return create_dot(self, bf16_as_float32(a), bf16_as_float32(b), d, *args)

    interpreter._patch_lang_tensor = patched_tensor
    interpreter.InterpreterBuilder.create_dot = patched_dot

    def undo() -> None:
        interpreter._patch_lang_tensor = patch_tensor
        interpreter.InterpreterBuilder.create_dot = create_dot

    return undo
