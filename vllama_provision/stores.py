"""Model stores: where a model's content lives on a host.

A store is content-addressed: one folder per content (a file's sha256, or a pinned Hugging Face
revision), never overwritten in place, so a release that points at a folder keeps its model
whatever later releases stage. Rolling back or forward switches releases; it never rewrites
model data.

``DirectoryStore`` keeps plain folders under ``vllama_models_root``:

    <models_root>/<slug>/<sha256 or revision>/<file>

A ZFS store (one dataset per content under ``vllama_zfs_dataset``, issue 7) is to implement the
same interface; until it exists every host uses plain folders.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from vllama_provision.modelref import ModelRef


@dataclass(frozen=True)
class Placement:
    """Where one model content lives in a store."""

    store_dir: str
    store_path: str


class ModelStore(Protocol):
    def place(self, ref: ModelRef, content_key: str, file_name: str) -> Placement:
        """The folder (and file) holding this content; the same content always maps to the
        same place, and different content never does."""
        ...


@dataclass(frozen=True)
class DirectoryStore:
    """Plain folders under the models root."""

    root: str

    def place(self, ref: ModelRef, content_key: str, file_name: str) -> Placement:
        key = content_key or ref.revision or "main"
        store_dir = f"{self.root.rstrip('/')}/{ref.slug}/{key}"
        return Placement(store_dir, f"{store_dir}/{file_name}" if file_name else store_dir)


def store_for(models_root: str) -> ModelStore:
    """The store a host uses."""
    return DirectoryStore(models_root)
