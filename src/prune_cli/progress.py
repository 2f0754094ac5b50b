"""Progress bars for the long loops that are not training: scoring (Michel's pass over the training
data, Taylor's, APD's), evaluation, generation. Training has its own bar (`train.py`).

The loops live in the methods and the tasks, several layers below the run that knows whether bars
are wanted (the main process of a run with `trainer.progress_bar=true`), so the run switches them on
for its duration (`shown(True)`) and the loops wrap their iterables in `bar(...)`; anywhere else
(tests, the Python API, other processes) `bar` returns the iterable untouched.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

_ON = [False]


@contextmanager
def shown(on: bool) -> Iterator[None]:
    """Bars on (or off) inside the block."""
    before = _ON[0]
    _ON[0] = bool(on)
    try:
        yield
    finally:
        _ON[0] = before


def bar(items: Iterable, desc: str, total: int | None = None) -> Iterable:
    """`items`, counted on stderr while bars are on (a bar that disappears when the loop ends)."""
    if not _ON[0]:
        return items
    from tqdm.auto import tqdm

    if total is None and hasattr(items, "__len__"):
        total = len(items)
    return tqdm(items, desc=desc, total=total, leave=False, dynamic_ncols=True, unit="batch")
