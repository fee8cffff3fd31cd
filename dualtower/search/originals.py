"""An indexed image's own file, served only from inside the folders the index was built from."""

from __future__ import annotations

import os
import stat

from PIL import Image


def open_original(store, item_id: int):
    """(an open binary file, its media type) of item `item_id`'s own image file, checked now: a regular file
    whose real path (symlinks resolved) lies inside one of the index's `folders`, and whose header is an
    image's. LookupError naming the item and the reason otherwise. (As Starlette's StaticFiles does, every
    request re-checks: a file swapped for a symlink to elsewhere after indexing is refused.)"""
    item = store.item(item_id)
    if item is None:
        raise LookupError(f"no item {item_id}")
    if item.path is None:
        raise LookupError(f"item {item_id} has no file of its own (only its thumbnail is served)")
    folders = store.folders
    if not folders:
        raise LookupError(f"the index records no image folders (built by an older dualtower); run "
                          f"`dualtower index` again to serve originals (item {item_id})")
    real = os.path.realpath(item.path)
    if not any(os.path.commonpath([real, folder]) == folder for folder in folders):
        raise LookupError(f"the original of item {item_id} is outside the indexed folders (only its thumbnail "
                          "is served)")
    try:
        f = open(real, "rb")
    except OSError:
        raise LookupError(f"the original of item {item_id} is not a file on disk (only its thumbnail is "
                          "served)") from None
    try:
        opened = f"/proc/self/fd/{f.fileno()}"  # what was opened, if a path component moved meanwhile
        if (os.path.exists(opened) and os.path.realpath(opened) != real) or \
                not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise LookupError(f"the original of item {item_id} is not a regular file inside the indexed "
                              "folders")
        try:
            with Image.open(f) as image:  # the header only
                kind = image.format
        except Exception:
            kind = None
        media = Image.MIME.get(kind or "")
        if media is None or not media.startswith("image/"):
            raise LookupError(f"the original of item {item_id} is no longer an image file")
        f.seek(0)
        return f, media
    except BaseException:
        f.close()
        raise
