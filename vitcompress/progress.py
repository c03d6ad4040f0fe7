"""Progress bars: ``tqdm`` where it is installed, a silent bar with the same interface where it is not.

A GPU image may lack tqdm (it is a convenience, never a result); the library runs the same there,
without bars.
"""

from __future__ import annotations

try:
    from tqdm.auto import tqdm
except ImportError:  # pragma: no cover - exercised by the GPU-tables test, which hides tqdm

    class tqdm:  # noqa: N801 - mirrors tqdm's name and the part of its interface the library uses
        """A progress bar that shows nothing."""

        def __init__(self, iterable=None, *args, total=None, **kwargs):
            self.iterable = iterable
            self.total = total
            self.n = 0
            self.disable = True

        def __iter__(self):
            yield from self.iterable if self.iterable is not None else ()

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.close()

        def update(self, n=1):
            self.n += n

        def set_postfix_str(self, *args, **kwargs):
            pass

        def set_postfix(self, *args, **kwargs):
            pass

        def set_description(self, *args, **kwargs):
            pass

        def write(self, *args, **kwargs):
            pass

        def close(self):
            pass


__all__ = ["tqdm"]
