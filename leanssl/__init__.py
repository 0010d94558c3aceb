"""leanssl: single-branch self-supervised pretraining for small compute, small data and small models.

Python API, mirroring the commands (each imported on first use, so `import leanssl` stays fast):

    leanssl.load_backbone(path)          a run folder or exported backbone -> nn.Module in eval mode
    leanssl.embed(path, "digits")        embeddings of every image, with an index (leanssl.embeddings.Embeddings)
    leanssl.select(features, budget=50)  which rows to label (USL: diverse and representative)
"""

from importlib import import_module

_API = {"load_backbone": "leanssl.export", "embed": "leanssl.embeddings", "select": "leanssl.selection"}
__all__ = list(_API)


def installed_version() -> str:
    """The installed package's version ("unknown" in a source tree that was never installed)."""
    from importlib import metadata

    try:
        return metadata.version("leanssl")
    except metadata.PackageNotFoundError:
        return "unknown"


def __getattr__(name: str):
    if name in _API:
        return getattr(import_module(_API[name]), name)
    raise AttributeError(f"module 'leanssl' has no attribute '{name}'")
