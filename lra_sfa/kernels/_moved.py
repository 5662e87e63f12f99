"""Old module paths of the kernel package (before the sfa/, decode/ and wide/ subpackages) keep importing.

A meta-path finder maps each old name to its new module and warns once with
the new path, so ``from lra_sfa.kernels.sfa_decode import sfa_decode`` still
runs. A finder rather than one stub file per old name keeps the package to
the modules that hold code.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

MOVED = {f"lra_sfa.kernels.{old}": f"lra_sfa.kernels.{new}" for old, new in {
    "flash_sfa": "sfa.autograd", "flash_sfa_fwd": "sfa.triton_fwd", "flash_sfa_bwd": "sfa.triton_bwd",
    "flash_sfa_gluon": "sfa.gluon_fwd", "flash_sfa_bwd_gluon": "sfa.gluon_bwd", "sfa_ref": "sfa.reference",
    "topk_pack": "sfa.topk_pack", "sfa_check": "sfa.check", "sfa_decode": "decode.launcher",
    "wide_ref": "wide.reference", "wide_posting": "wide", "wide_triton": "wide.triton_kernel",
    "wide_soft": "wide.soft",
}.items()}


class MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Resolves an old module name to the module that now holds its code."""

    def find_spec(self, fullname, path=None, target=None):
        return importlib.util.spec_from_loader(fullname, self) if fullname in MOVED else None

    def create_module(self, spec):
        warnings.warn(f"{spec.name} moved to {MOVED[spec.name]}; import from there", FutureWarning, stacklevel=2)
        return importlib.import_module(MOVED[spec.name])

    def exec_module(self, module) -> None:
        """The new module is already executed."""


def install() -> None:
    if not any(isinstance(finder, MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.append(MovedModuleFinder())
