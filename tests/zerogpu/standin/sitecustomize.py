"""ZeroGPU on a CPU build of torch: the CPU stands in for the GPU that spaces attaches to each worker.

Put this folder on ``PYTHONPATH`` of a process run with ``SPACES_ZERO_GPU=true``. Only what a CPU
cannot do is replaced, and nothing of the app:
- spaces reads its torch build's CUDA version at import (a CPU build has none): "12.8" while it does,
  and keeps a reference to ``torch._C._cuda_init`` (absent from a CPU build): one that raises, as a
  CPU build's CUDA calls do; and its check that CUDA was not initialised before it sends
  ``torch.cuda._is_in_bad_fork`` to a child process by name, which a CPU build's (a lambda) can't
  be: the same check runs in this process;
- a worker's two CUDA steps: ``init`` (select the GPU: nothing to select) and ``move`` (copy every
  tensor the main process moved to "cuda" onto the GPU: here each stand-in tensor gets its data back,
  on the CPU);
- ``pack`` (write those tensors to disk at launch, so that ``move`` can read them back) keeps them
  in memory instead, since this ``move`` reads them from there.
Everything else is spaces' own code: the patched torch in the main process (tensors moved to "cuda"
become stand-ins), the device API calls, the fork per call, worker reuse, the pickled queues.
"""

import importlib.abc
import importlib.machinery
import sys


def _stand_in(zero_torch) -> None:
    from spaces.zero.torch import patching

    def init(nvidia_uuid: str) -> None:
        pass

    def pack() -> int:
        return patching._total_unpacked_size()

    def move(callback=None) -> None:
        for fake, original in patching.cuda_aliases.items():
            if original is not None:
                fake.data = original
                if callback is not None:
                    callback(original.numel() * original.element_size())

    def is_in_bad_fork() -> bool:
        import torch

        return torch.cuda._is_in_bad_fork()

    zero_torch.init, zero_torch.pack, zero_torch.move = init, pack, move
    zero_torch.is_in_bad_fork = is_in_bad_fork


def _no_cuda() -> None:
    raise AssertionError("Torch not compiled with CUDA enabled")


class _SpacesOnTheCPU(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name not in ("spaces.zero.torch", "spaces.zero.torch.static"):
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        run = spec.loader.exec_module

        def exec_module(module) -> None:
            if name == "spaces.zero.torch.static":
                import torch

                real, torch.version.cuda = torch.version.cuda, torch.version.cuda or "12.8"
                try:
                    run(module)
                finally:
                    torch.version.cuda = real
            else:
                import torch

                if not hasattr(torch._C, "_cuda_init"):
                    torch._C._cuda_init = _no_cuda
                run(module)
                _stand_in(module)

        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, _SpacesOnTheCPU())
