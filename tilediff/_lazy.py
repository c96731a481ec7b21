"""Module attributes imported on first use (PEP 562), so that importing a package stays cheap."""
import importlib


def lazy_attributes(package, table):
    """A module ``__getattr__`` for ``package`` (its name) serving ``table`` {attribute: module}: the
    attribute is imported from its module on first use and cached in the package."""
    def __getattr__(name):
        if name not in table:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(table[name]), name)
        setattr(importlib.import_module(package), name, value)
        return value
    return __getattr__
