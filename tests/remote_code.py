"""Prologue of a subprocess script that plays a user without the MARNet package (`trust_remote_code=True` users)."""

BLOCK_MARNET_PACKAGE = """
import importlib.abc
import sys


class BlockMARNetPackage(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "modeling_marnet":
            raise ImportError(f"{name} is blocked: this process plays a user without the MARNet package")


sys.meta_path.insert(0, BlockMARNetPackage())
try:
    import modeling_marnet
except ImportError:
    pass
else:
    raise SystemExit("modeling_marnet is importable although it must be blocked")
"""
