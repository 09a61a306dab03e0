"""Model stores: where a model's content lives on a host.

A store is content-addressed: one folder per content (a file's sha256, or a pinned Hugging Face
revision), never overwritten in place, so a release that points at a folder keeps its model
whatever later releases stage. Rolling back or forward switches releases; it never rewrites
model data.

``DirectoryStore`` keeps plain folders under ``vllama_models_root``:

    <models_root>/<slug>/<sha256 or revision>/<file>

``ZfsStore`` (hosts with ``vllama_zfs_dataset``) gives every content its own dataset,
``<dataset>/<slug>--<sha256 prefix or revision>``, mounted at the very folder a
``DirectoryStore`` would use. The role creates it, fills and verifies it, then snapshots it
(``@staged``) and sets ``readonly=on``; it is never written again, and garbage collection destroys
it once no release references it (``vllama_provision.zfs``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from vllama_provision.modelref import ModelRef
from vllama_provision.zfs import child_name


@dataclass(frozen=True)
class Placement:
    """Where one model content lives in a store."""

    store_dir: str
    store_path: str
    dataset: str = ""  # the ZFS dataset mounted at store_dir ('' for plain folders)


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


@dataclass(frozen=True)
class ZfsStore:
    """One ZFS dataset per content under ``parent``, mounted where a DirectoryStore folder
    would be (so releases and engines see the same paths either way)."""

    parent: str
    root: str

    def place(self, ref: ModelRef, content_key: str, file_name: str) -> Placement:
        key = content_key or ref.revision or "main"
        folder = DirectoryStore(self.root).place(ref, content_key, file_name)
        return Placement(folder.store_dir, folder.store_path,
                         dataset=child_name(self.parent, ref.slug, key))


def store_for(models_root: str, zfs_dataset: str = "") -> ModelStore:
    """The store a host uses: ZFS datasets when ``vllama_zfs_dataset`` is set, else folders."""
    if zfs_dataset:
        return ZfsStore(zfs_dataset, models_root)
    return DirectoryStore(models_root)
