"""Errors the command line reports as one line; importable without torch."""


class MissingDependency(ImportError):
    """A feature's optional dependency is not installed; the message names the pip command that adds it."""


def require(module: str, feature: str, extra: str):
    """`import module`, or MissingDependency naming the extra that installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingDependency(f"{feature} needs {module.split('.')[0]}, which is not installed: "
                                f"pip install 'dualtower[{extra}]'") from e
