"""The namespace helper for the tests: ``deploy/netns.py`` (the one copy), loaded by file path.

``deploy/`` holds scripts, not a package, so the module is loaded with importlib and registered
in ``sys.modules`` (dataclasses look their module up there while the class is created).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

MODULE_NAME = "fedsilo_deploy_netns"
SOURCE = Path(__file__).resolve().parents[2] / "deploy" / "netns.py"


def _load() -> ModuleType:
    """Load deploy/netns.py once per process."""
    if MODULE_NAME in sys.modules:
        return sys.modules[MODULE_NAME]
    spec = importlib.util.spec_from_file_location(MODULE_NAME, SOURCE)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load the namespace helper from {SOURCE}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[MODULE_NAME] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[MODULE_NAME]
        raise
    return module


if TYPE_CHECKING:  # type checkers read the source as a module; at run time it is loaded by path
    from deploy.netns import Topology
else:
    Topology = _load().Topology

__all__ = ["Topology"]
