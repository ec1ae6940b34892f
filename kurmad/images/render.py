"""Rendering an app's root filesystem (ace.md §Filesystem Setup).

An image's dependencies are applied first, depth-first in listed order, then the image itself;
a later layer overwrites what an earlier one put at the same path (a symlink is replaced, never
followed), and every ``pathWhitelist`` on the way from the image down to a layer filters that
layer's files. An image reached by two paths is applied twice, each time with that path's
whitelists (A->[B,C], B->[D], C->[D] gives D, B, D, C, A).

The result is computed as a plan (which layer provides each path) and materialised once per
distinct stack as a tree of hard links into the store, cached under ``renders/``. That tree (or,
for an image without dependencies or whitelist, its store rootfs directly) is the read-only
lower layer of each app's root filesystem (runtime/rootfs.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import threading
import uuid
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kurmad.appc import Dependency, ImageID
from kurmad.linux.files import copy_metadata, fsync_dir, read_json, remove_tree, write_json_atomic

from .store import TMP, ImageNotFound, ImageRecord, ImageStore, StoreError

RENDERS = "renders"  # the cache, in the store's root
RENDER_INFO = "render.json"  # in each render: the layers it was built from

# A DAG with shared dependencies is applied once per path; refuse stacks that explode.
MAX_LAYERS = 256


class RenderError(StoreError):
    """An image cannot be rendered: a dependency is missing, mismatched or cyclic."""


@dataclass(frozen=True)
class Layer:
    image_id: ImageID | None
    rootfs: Path
    # Each non-empty pathWhitelist from this image up to the rendered one, as rootfs-relative
    # paths. A path of this layer survives only if every one of them lists it.
    whitelists: tuple[frozenset[str], ...] = ()
    # Directories the archive did not contain (extraction made them as parents): they must
    # not override a lower layer's real directory.
    implied_dirs: frozenset[str] = frozenset()

    def admits(self, path: str) -> bool:
        return all(path in whitelist for whitelist in self.whitelists)


# --- resolving dependencies -------------------------------------------------------------------


def resolve_layers(store: ImageStore, top: ImageRecord) -> list[Layer]:
    """The layers to apply, lowest first and ``top`` last."""
    layers: list[Layer] = []
    _visit(store, top, (), (top.id,), layers)
    return layers


def _visit(
    store: ImageStore,
    record: ImageRecord,
    inherited: tuple[frozenset[str], ...],
    chain: tuple[ImageID, ...],
    layers: list[Layer],
) -> None:
    whitelists = inherited
    own = _whitelist(record)
    if own is not None:
        whitelists = (own, *inherited)
    for dependency in record.manifest.dependencies:
        child = _resolve_dependency(store, record, dependency)
        if child.id in chain:
            names = [store.get(i).name for i in chain[chain.index(child.id) :]] + [child.name]
            raise RenderError(f"dependency cycle: {' -> '.join(names)}")
        _visit(store, child, whitelists, (*chain, child.id), layers)
    if len(layers) >= MAX_LAYERS:
        raise RenderError(f"{record.name}: more than {MAX_LAYERS} layers to apply")
    layers.append(Layer(record.id, store.rootfs(record.id), whitelists, record.implied_dirs))


def _resolve_dependency(store: ImageStore, parent: ImageRecord, dep: Dependency) -> ImageRecord:
    wanted = ",".join([dep.image_name, *(f"{k}={v}" for k, v in dep.labels.items())])
    try:
        if dep.image_id is not None:
            found = store.get(dep.image_id)
            _check_identity(parent, dep, found)
        else:
            found = store.find(dep.image_name, dep.labels)
    except ImageNotFound:
        ident = f" ({dep.image_id})" if dep.image_id else ""
        raise RenderError(
            f"{parent.name} needs {wanted}{ident}, which is not in the store"
        ) from None
    if dep.size is not None and dep.size not in (found.source_size, found.tar_size):
        raise RenderError(
            f"{parent.name} needs {wanted} of {dep.size} bytes, but {found.id} has "
            f"{found.source_size} ({found.tar_size} uncompressed)"
        )
    return found


def _check_identity(parent: ImageRecord, dep: Dependency, found: ImageRecord) -> None:
    if found.id != dep.image_id:
        raise ImageNotFound(dep.image_id)  # a prefix matched: dependencies need the full ID
    if found.name != dep.image_name:
        raise RenderError(
            f"{parent.name} needs {dep.image_name} as {dep.image_id}, but that image is {found.name}"
        )
    for key, value in dep.labels.items():
        if found.labels.get(key) != value:
            raise RenderError(
                f"{parent.name} needs {dep.image_name} with {key}={value}; {found.id} has {key}={found.labels.get(key)}"
            )


def _whitelist(record: ImageRecord) -> frozenset[str] | None:
    entries = record.manifest.path_whitelist
    if not entries:
        return None  # an empty list means no whitelist (aci.md)
    return frozenset("/".join(p for p in entry.split("/") if p) for entry in entries)


# --- planning -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    layer: int  # index into the layer list
    kind: int  # stat.S_IFMT of the entry


@dataclass
class RenderPlan:
    layers: list[Layer]
    entries: dict[str, Source] = field(default_factory=dict)
    # Directories needed as parents that no layer provides: created with mode 0755.
    implied: set[str] = field(default_factory=set)


def _walk(root: Path) -> Iterator[tuple[str, int]]:
    """Every path below ``root`` (relative, parents first) with its file type; never follows
    symlinks."""
    stack = [""]
    while stack:
        relative = stack.pop()
        with os.scandir(root / relative if relative else root) as entries:
            for entry in entries:
                path = f"{relative}/{entry.name}" if relative else entry.name
                kind = stat.S_IFMT(entry.stat(follow_symlinks=False).st_mode)
                yield path, kind
                if kind == stat.S_IFDIR:
                    stack.append(path)


def _ancestors(path: str) -> Iterator[str]:
    while path:
        path = path.rpartition("/")[0]
        yield path


def plan(layers: Sequence[Layer]) -> RenderPlan:
    """Decide which layer provides each path, walking from the top layer down: the first
    (uppermost) layer to provide a path wins, and nothing is taken from below a path an upper
    layer made a non-directory."""
    result = RenderPlan(list(layers))
    required_dirs: set[str] = set()  # ancestors of chosen paths: must stay directories
    candidate_dirs: dict[str, Source] = {}  # directories a whitelist left out, kept if needed
    for index in reversed(range(len(layers))):
        layer = layers[index]
        implied = layer.implied_dirs
        if "" not in implied and "" not in result.entries:
            result.entries[""] = Source(index, stat.S_IFDIR)
        for path, kind in _walk(layer.rootfs):
            if path in result.entries or (kind == stat.S_IFDIR and path in implied):
                continue
            if _hidden_by_upper(path, kind, result.entries, required_dirs):
                continue
            if not layer.admits(path):
                if kind == stat.S_IFDIR:
                    candidate_dirs.setdefault(path, Source(index, kind))
                continue
            result.entries[path] = Source(index, kind)
            required_dirs.update(_ancestors(path))
    for directory in required_dirs:
        if directory not in result.entries:
            source = candidate_dirs.get(directory)
            if source is not None:
                result.entries[directory] = source
            else:
                result.implied.add(directory)
    return result


def _hidden_by_upper(
    path: str, kind: int, chosen: dict[str, Source], required_dirs: set[str]
) -> bool:
    if kind != stat.S_IFDIR and path in required_dirs:
        return True  # an upper layer has things below this path: it stays a directory
    return any(
        (source := chosen.get(parent)) is not None and source.kind != stat.S_IFDIR
        for parent in _ancestors(path)
        if parent
    )


# --- materialising ------------------------------------------------------------------------------


def materialise(render_plan: RenderPlan, target: Path) -> None:
    """Create the planned tree in the empty directory ``target``: hard links into the layers,
    directories made with their source's metadata."""
    directories: list[tuple[str, Path | None]] = []
    paths = sorted(set(render_plan.entries) | render_plan.implied, key=lambda p: (p.count("/"), p))
    for path in paths:
        destination = target / path if path else target
        source = render_plan.entries.get(path)
        if source is None:
            destination.mkdir(mode=0o755, exist_ok=path == "")
            directories.append((path, None))
            continue
        origin = (
            render_plan.layers[source.layer].rootfs / path
            if path
            else render_plan.layers[source.layer].rootfs
        )
        if source.kind == stat.S_IFDIR:
            if path:
                destination.mkdir(mode=0o700)
            directories.append((path, origin))
        else:
            os.link(origin, destination, follow_symlinks=False)
    for path, dir_origin in reversed(directories):
        if dir_origin is not None:
            copy_metadata(dir_origin, target / path if path else target)


# --- the render cache -----------------------------------------------------------------------------

_build_locks: dict[str, threading.Lock] = {}
_build_locks_guard = threading.Lock()


def _render_key(layers: Sequence[Layer]) -> str:
    stack = [[layer.image_id, sorted(sorted(w) for w in layer.whitelists)] for layer in layers]
    return hashlib.sha256(json.dumps(stack).encode()).hexdigest()[:32]


def _needs_no_render(layers: Sequence[Layer]) -> bool:
    return len(layers) == 1 and not layers[0].whitelists


class RenderCache:
    """The renders of one store, under its ``renders/``: this module's alone. Attached to the
    store (ImageStore.attach) so that deleting an image drops the renders it was part of."""

    def __init__(self, store: ImageStore) -> None:
        self.store = store
        self.root = store.root / RENDERS
        self.root.mkdir(exist_ok=True)

    def drop(self, keep: Callable[[list[str]], bool]) -> list[Path]:
        """Move out of sight the renders whose layers ``keep`` rejects, and unreadable ones:
        they rebuild on demand. Returns where they went, to be removed."""
        doomed = []
        for entry in self.root.iterdir():
            try:
                layers = read_json(entry / RENDER_INFO)["layers"]
            except (OSError, ValueError, KeyError):
                layers = None
            if layers is None or not keep(layers):
                target = self.store.doomed_path("unrender", entry.name[:16])
                try:
                    os.rename(entry, target)
                except FileNotFoundError:
                    continue  # a render build replacing its crashed predecessor took it
                doomed.append(target)
        return doomed


_caches: weakref.WeakKeyDictionary[ImageStore, RenderCache] = weakref.WeakKeyDictionary()
_caches_guard = threading.Lock()


def cache_of(store: ImageStore) -> RenderCache:
    """The store's render cache, attached to it at first use (when renders of images deleted
    while none was attached are dropped too)."""
    with _caches_guard:
        cache = _caches.get(store)
        if cache is None:
            cache = _caches[store] = RenderCache(store)
            store.attach(cache)
            store.sweep_derived(cache)
        return cache


def render(store: ImageStore, record: ImageRecord) -> Path:
    """The rendered root filesystem of ``record``, read-only and shared: the store's own
    rootfs for a plain image, else a cached tree of hard links built on first use."""
    layers = resolve_layers(store, record)
    if _needs_no_render(layers):
        return layers[0].rootfs
    key = _render_key(layers)
    done = cache_of(store).root / key
    holder = f"render {key} ({uuid.uuid4().hex[:8]})"
    try:
        # Held while building, so no layer can be deleted from under the build.
        store.hold(holder, {layer.image_id for layer in layers if layer.image_id})
        with _lock_for(key):
            if not (done / RENDER_INFO).exists():
                _build_render(store, layers, done)
    except ImageNotFound as err:
        raise RenderError(f"{record.name}: a layer was deleted while rendering ({err})") from None
    finally:
        store.release(holder)
    return done / "rootfs"


def lower_dirs(store: ImageStore, record: ImageRecord) -> list[Path]:
    """The read-only trees an app's root filesystem stacks, uppermost first: for an image
    made of OCI layers the layers themselves (overlayfs applies their whiteouts; no render),
    else the one rendered tree."""
    layers = resolve_layers(store, record)
    stacked = [layer for layer in layers if layer.image_id and store.get(layer.image_id).layer]
    if not stacked:
        return [render(store, record)]
    if any(layer.whitelists for layer in layers):
        raise RenderError(f"{record.name}: a pathWhitelist cannot filter OCI layers")
    dirs = [
        store.layer_path(layer.image_id) if layer in stacked else layer.rootfs
        for layer in layers
        if layer.image_id and (layer in stacked or _has_entries(layer.rootfs))
    ]
    return dirs[::-1] or [layers[-1].rootfs]  # no layer at all: the empty rootfs


def _has_entries(directory: Path) -> bool:
    with os.scandir(directory) as entries:
        return next(entries, None) is not None


def layer_ids(store: ImageStore, record: ImageRecord) -> list[ImageID]:
    """Every image a render of ``record`` reads: what a pod must hold while it runs."""
    return list(
        dict.fromkeys(layer.image_id for layer in resolve_layers(store, record) if layer.image_id)
    )


def _lock_for(key: str) -> threading.Lock:
    with _build_locks_guard:
        return _build_locks.setdefault(key, threading.Lock())


def _build_render(store: ImageStore, layers: list[Layer], done: Path) -> None:
    staging = store.root / TMP / f"render-{uuid.uuid4().hex}"
    try:
        (staging / "rootfs").mkdir(parents=True)
        materialise(plan(layers), staging / "rootfs")
        write_json_atomic(staging / RENDER_INFO, {"layers": [layer.image_id for layer in layers]})
        if done.exists():  # an incomplete render from before a crash
            remove_tree(done)
        os.rename(staging, done)
        fsync_dir(done.parent)
    finally:
        if staging.exists():
            remove_tree(staging)
