import importlib.metadata as _m
