"""Domain artifacts (write, read, verify) and their exports; the artifact contract is in :mod:`dasgen.artifact.schema`.

- :mod:`~dasgen.io.atomic`: atomic writes and sha256
- :mod:`~dasgen.artifact.writer`: ``DomainWriter`` (resumable, multi-rank), ``read_index``, ``iter_domain_images``
- :mod:`~dasgen.store.export_common`: ``export_domain`` to Cityscapes layout, Parquet (Hugging Face) or HDF5
- :mod:`~dasgen.artifact.verify`: ``verify.verify`` an export or a domain against its manifest or index

Names are imported lazily, so ``import dasgen.io.atomic`` (used by checkpoints) does not load h5py or pyarrow.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "dasgen.io.atomic": ("atomic_open", "atomic_write_bytes", "atomic_write_json", "atomic_write_text", "sha256_bytes",
               "sha256_file"),
    "dasgen.artifact.writer": ("DomainWriter", "ImageRecord", "domain_dir_name", "domain_files", "iter_domain_images",
               "iter_domain_pngs", "read_index"),
    "dasgen.store.export_common": ("FORMATS", "export_domain"),
    "dasgen.artifact.schema": ("SCHEMA_VERSION",),
    "dasgen.artifact.verify": ("VerifyReport",),  # the function: dasgen.artifact.verify.verify (the submodule owns the name)
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    if name in _MODULE_OF:
        return getattr(importlib.import_module(_MODULE_OF[name]), name)
    raise AttributeError(f"module 'dasgen.store' has no attribute {name!r}")
