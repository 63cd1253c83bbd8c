"""A slower compiled path, for the test that the panel says "slower" and never "faster": put this
folder on ``PYTHONPATH`` of a `python app.py` with ``AOTI_TEST_SLOWER_MS`` set, and every call of a
compiled graph in that process (`aoti.swap.CompiledMethod`) takes four times as long plus that many
milliseconds, in the load-time measurement and in requests alike (a fixed delay alone was measured as
"no measurable difference" once on a loaded CI machine). Nothing else of the app changes."""

import importlib.abc
import importlib.machinery
import os
import sys
import time

DELAY_S = float(os.environ.get("AOTI_TEST_SLOWER_MS", "0")) / 1000


def _slow_down(swap) -> None:
    call = swap.CompiledMethod.__call__

    def slower(self, *args, **kwargs):
        start = time.perf_counter()
        out = call(self, *args, **kwargs)
        # Four times as long as the call took, and the fixed delay on top: slower by a margin that grows
        # with the machine's load, as eager's time and the measurement's spread do.
        time.sleep(DELAY_S + 3 * (time.perf_counter() - start))
        return out

    swap.CompiledMethod.__call__ = slower


class _SlowerGraphs(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "aoti.swap":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        run = spec.loader.exec_module

        def exec_module(module) -> None:
            run(module)
            _slow_down(module)

        spec.loader.exec_module = exec_module
        return spec


if DELAY_S > 0:
    sys.meta_path.insert(0, _SlowerGraphs())
