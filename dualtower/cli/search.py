"""`dualtower index`, `search`, `serve`: a search index of images, queried from the command line or a service."""

from __future__ import annotations

import sys

from ..errors import UserError
from .common import count, embedder, inference_args, model_args, options, runtime_arg, shown


def score(text: str) -> float:
    """An argparse type: a cosine similarity in [-1, 1]."""
    import argparse
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or not -1 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text} is not between -1 and 1")
    return value


def model_source(name: str) -> str:
    """What an index records of --model: an absolute path for a local one, the name otherwise."""
    import os

    return os.path.abspath(name) if os.path.exists(name) else name


def open_index(args):
    """--index with --model (or the model it records) on --runtime, at --device and --precision."""
    from ..search import SearchIndex

    return SearchIndex.open(args.index, args.model, args.runtime, options(args, service=True))


def _cmd_index(args) -> int:
    from ..search import build_index

    if args.executor == "ray":
        return _index_on_ray(args)
    for flag in ("ray_address", "shards", "shard_size", "actors", "cpus"):
        if getattr(args, flag) is not None:
            raise UserError(f"--{flag.replace('_', '-')} is for --executor ray")
    report = build_index(args.data, embedder(args), args.out, engine=args.engine, batch_size=args.batch_size,
                         workers=args.workers, progress=True, model_source=model_source(args.model),
                         image_key=args.image_key, caption_key=args.caption_key, backend=args.backend, uri=args.uri,
                         collection=args.collection, repair=args.repair)
    for key, reason, detail in report.skipped_list[:20]:
        print(f"skipped {shown(key)}: {reason} ({shown(detail)})", file=sys.stderr)
    if len(report.skipped_list) > 20:
        print(f"... and {len(report.skipped_list) - 20} more skipped", file=sys.stderr)
    print(f"{args.out}: {report.summary()}")
    return 0


def _index_on_ray(args) -> int:
    import functools

    from .. import runtimes
    from ..runtimes.pytorch import random_weights
    from ..search import build_index_ray

    if random_weights(args.model):
        raise UserError(f"--model {args.model}: an architecture name opens random weights, different in every "
                        "process of the cluster; save a model (dualtower convert, or a checkpoint) and pass its path")
    open_model = functools.partial(runtimes.open, args.model, args.runtime, options(args))
    report = build_index_ray(args.data, open_model, args.out, shards_dir=args.shards,
                             shard_size=args.shard_size, batch_size=args.batch_size, address=args.ray_address,
                             cpus=args.cpus, actors=args.actors, threads=max(1, args.workers), engine=args.engine,
                             backend=args.backend, uri=args.uri, collection=args.collection, image_key=args.image_key,
                             caption_key=args.caption_key, model_source=model_source(args.model), progress=True)
    print(f"{args.out}: {report.summary()}")
    return 0


def _cmd_merge(args) -> int:
    from ..search import merge_shards

    report = merge_shards(args.shards, args.out, engine=args.engine, backend=args.backend, uri=args.uri,
                          collection=args.collection)
    print(f"{args.out}: {report.summary()}")
    return 0


def _engine_args(p) -> None:
    p.add_argument("--engine", choices=["auto", "flat", "ivf"], default="auto",
                   help="flat: exact; ivf: compressed codes with an exact re-rank; auto: flat up to 100,000 images")
    p.add_argument("--backend", choices=["faiss", "milvus"],
                   help="where the vectors are searched: FAISS in the index folder (the default for a new index) or "
                        "a Milvus collection (pip install 'dualtower[milvus]')")
    p.add_argument("--uri", help="milvus: a Milvus Lite file (default: INDEX/milvus.db) or a server's URL, e.g. "
                                 "http://localhost:19530")
    p.add_argument("--collection", default="dualtower", help="milvus: the collection's name")


def add_merge(sub) -> None:
    import argparse

    p = sub.add_parser("index-merge", prog="dualtower index merge", help=argparse.SUPPRESS,
                       description="Merge the shards of `dualtower index --executor ray` into a search index (created "
                                   "or updated: shards merged before are passed over).")
    p.add_argument("shards", help="a shards folder (by default INDEX/shards of an `index --executor ray` run)")
    p.add_argument("--out", required=True, help="the index folder (created, or updated when it exists)")
    _engine_args(p)
    p.set_defaults(func=_cmd_merge, out_dir=True)


def _index_args(p) -> None:
    p.add_argument("index", help="an index folder made by `dualtower index`")
    p.add_argument("--model", help="the index's model, when it should not be loaded from where the index "
                                   "says (it must have the same weights)")
    p.add_argument("--arch", help="the architecture of a bare state dict checkpoint")
    inference_args(p)
    runtime_arg(p)


def add_index(sub) -> None:
    p = sub.add_parser("index", help="build or update a search index of the images of a data spec",
                       epilog="`dualtower index merge SHARDS --out INDEX` merges the shards of --executor ray runs "
                              "into an index")
    p.add_argument("data", help="a folder of images, a captions file, tar shards or builtin:NAME")
    model_args(p)
    p.add_argument("--out", required=True, help="the index folder (created, or updated when it exists)")
    _engine_args(p)
    p.add_argument("--executor", choices=["local", "ray"], default="local",
                   help="local: this process and its decoding workers; ray: a Ray cluster (pip install "
                        "'dualtower[ray]'), a shard per unit of work, each embedded exactly once: run it again "
                        "after any failure and only what is missing is embedded")
    p.add_argument("--ray-address", help="ray: the cluster (default: $RAY_ADDRESS, else a local cluster started for "
                                         "this run)")
    p.add_argument("--shards", help="ray: the shards folder (default: OUT/shards)")
    p.add_argument("--shard-size", type=count(1), help="ray: records per shard, planned once (default 1000)")
    p.add_argument("--actors", type=count(1), help="ray: embedding actors, one model each (default: one per GPU, "
                                                   "else one per CPU)")
    p.add_argument("--cpus", type=count(1), help="ray: the CPUs of the local cluster (default: all)")
    p.add_argument("--repair", action="store_true", help="an index whose database is damaged: move it aside "
                   "(OUT.damaged-TIME) and build it again (a damaged or foreign engine file is rebuilt anyway)")
    p.add_argument("--image-key", default="image", help="the image column of a captions file")
    p.add_argument("--caption-key", default="caption", help="the caption column of a captions file")
    p.add_argument("--batch-size", type=count(1), default=64, help="images per batch")
    p.add_argument("--workers", type=count(0), default=2,
                   help="image-decoding processes (threads with --runtime onnx)")
    inference_args(p)
    runtime_arg(p)
    p.set_defaults(func=_cmd_index)


def _cmd_search(args) -> int:
    import json

    from ..images import open_image

    images, like, unlike = args.image or [], args.like_id or [], args.unlike or []
    positive = ([{"text": args.text}] if args.text is not None else []) + [{"image": p} for p in images] + \
        [{"id": i} for i in like]
    negative = [{"text": t} for t in unlike] + [{"image": p} for p in args.unlike_image or []] + \
        [{"id": i} for i in args.unlike_id or []]
    if not positive:
        raise UserError("give a text to search for, --image FILE or --like-id ID (or several of them)")
    if not 1 <= args.k <= 10_000:
        raise UserError(f"-k {args.k}: expected 1 to 10000")
    for example in positive + negative:  # every file opens before the model loads
        if "image" in example:
            example["image"] = open_image(example["image"])
    index = open_index(args)
    page = {"offset": args.offset, "min_score": args.min_score, "where": args.where}
    if len(positive) == 1 and not negative and args.text is not None:
        hits = index.search_text(args.text, args.k, **page)
    elif len(positive) == 1 and not negative and images:
        hits = index.search_image(positive[0]["image"], args.k, **page)
    else:
        hits = index.search_examples(positive, negative, args.k, **page)
    if args.json:
        print(json.dumps([h.to_dict() for h in hits], indent=2))
        return 0
    for h in hits:
        where = shown(h.path or h.key)
        print(f"{h.score:.4f}  {where}" + (f"  {shown(h.caption)}" if h.caption else ""))
    return 0


def add_search(sub) -> None:
    p = sub.add_parser("search", help="the images of an index nearest a text or an image")
    _index_args(p)
    p.add_argument("text", nargs="?", help="what to look for, e.g. \"a red car\"")
    p.add_argument("--image", action="append", metavar="FILE",
                   help="search by this image file (repeat, or add a text: more like all of them)")
    p.add_argument("--like-id", action="append", type=int, metavar="ID",
                   help="more like this indexed image (its id, from --json); left out of the results")
    p.add_argument("--unlike", action="append", metavar="TEXT", help="less like this text (repeat)")
    p.add_argument("--unlike-image", action="append", metavar="FILE", help="less like this image file (repeat)")
    p.add_argument("--unlike-id", action="append", type=int, metavar="ID", help="less like this indexed image")
    p.add_argument("-k", type=count(1), default=10, help="how many results")
    p.add_argument("--offset", type=count(0), default=0, help="skip that many nearer results first: the next page "
                                                               "is --offset K, then 2K, ...")
    p.add_argument("--min-score", type=score, help="only results of at least this cosine similarity (-1 to 1), "
                                                    "so fewer than k may come back")
    p.add_argument("--where", action="append", metavar="FIELD OP VALUE",
                   help="only images that meet this condition (repeat: all of them), e.g. --where ext=jpg --where "
                        "'size<2MB' --where 'mtime>=2024-05-01' --where caption~beach --where 'rating>=3' (a list's "
                        "columns, an image's JSON sidecar); fields folder path ext mtime size width height caption; "
                        "operators = != < <= > >= ~ (contains)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=_cmd_search)


def _cmd_serve(args) -> int:
    from ..search.access import Access, read_keys
    from ..search.server import Limits, serve

    loopback = args.host in ("127.0.0.1", "localhost", "::1")
    if not loopback and not args.keys:
        raise UserError(f"--host {args.host} is reachable from other machines: give --keys FILE (make one with "
                        "`dualtower keys add FILE NAME`)")
    access = Access(read_keys(args.keys)) if args.keys else None  # a bad keys file fails before the model loads
    index = open_index(args)
    print(f"serving {args.index} ({len(index)} images) on http://{args.host}:{args.port}/"
          + (f" ({len(access.keys)} API keys)" if access else ""), file=sys.stderr)
    serve(index, args.host, args.port, Limits(max_body=args.max_body, max_k=args.max_k,
                                              max_waiting=args.max_waiting), access, tuple(args.cors or ()))
    return 0


def _cmd_dedupe(args) -> int:
    import json

    from ..search import dedupe

    index = open_index(args)
    given = {k: v for k, v in (("min_cosine", args.min_cosine), ("max_distance", args.max_distance),
                               ("neighbours", args.neighbours)) if v is not None}
    groups = dedupe.find(index, **given)
    items = index.store.items(sorted({i for g in groups for i in g.ids}))
    if args.json:
        print(json.dumps([g.to_dict(items) for g in groups], indent=2))
        return 0
    for n, group in enumerate(groups, 1):
        print(f"group {n}: {group.reason}, {len(group.ids)} images")
        for i in group.ids:
            print(f"  {shown(items[i].path or items[i].key)}  {items[i].width}x{items[i].height}")
        for p in group.pairs:
            print(f"    {shown(items[p['a']].key)} ~ {shown(items[p['b']].key)}: {p['reason']}, cosine "
                  f"{p['cosine']:.4f}, hash distance {p['hash_distance']}")
    print(f"{len(groups)} groups, {sum(len(g.ids) for g in groups)} images in them, of {len(index)}", file=sys.stderr)
    return 0


def add_dedupe(sub) -> None:
    p = sub.add_parser("dedupe", help="groups of duplicate images in an index: the same file, or the same picture "
                                      "re-encoded, resized, slightly cropped or in another format (not burst shots)")
    _index_args(p)
    p.add_argument("--min-cosine", type=score,
                   help="embeddings at least this near make a candidate pair (default: dedupe.MIN_COSINE)")
    p.add_argument("--max-distance", type=count(0, 64),
                   help="a candidate pair is a near-duplicate when at most this many of its perceptual hashes' 64 "
                        "bits differ (default: dedupe.MAX_DISTANCE, calibrated in benchmarks/dedupe.py)")
    p.add_argument("--neighbours", type=count(1, 1000),
                   help="the nearest images each image is compared with (default: dedupe.NEIGHBOURS)")
    p.add_argument("--json", action="store_true", help="print the groups as JSON")
    p.set_defaults(func=_cmd_dedupe)


def _cmd_keys(args) -> int:
    from ..search.access import add_key, read_keys

    if args.action == "add":
        if not args.name:
            raise UserError("keys add FILE NAME: name the key")
        key = add_key(args.file, args.name, "admin" if args.admin else "read", args.per_minute)
        print(key)
        print(f"added {'an admin' if args.admin else 'a read-only'} key {args.name!r} to {args.file}; it is shown "
              "only now (the file keeps its SHA-256)", file=sys.stderr)
    else:
        for k in read_keys(args.file):
            print(f"{k.name}\t{k.role}\t{k.per_minute}/min")
    return 0


def add_keys(sub) -> None:
    p = sub.add_parser("keys", help="API keys of a search service (serve --keys FILE)")
    p.add_argument("action", choices=["add", "list"], help="add a key (printed once) or list the names")
    p.add_argument("file", help="the keys file (JSON; keeps each key's SHA-256, never the key)")
    p.add_argument("name", nargs="?", help="add: the key's name (who uses it)")
    p.add_argument("--admin", action="store_true", help="add: an admin key (may start an index update)")
    p.add_argument("--per-minute", type=count(1, 1_000_000), default=600, help="add: requests a minute")
    p.set_defaults(func=_cmd_keys)


def add_serve(sub) -> None:
    p = sub.add_parser("serve", help="an HTTP search service and web page for an index")
    _index_args(p)
    p.add_argument("--host", default="127.0.0.1", help="the address to listen on (other than loopback: reachable "
                                                       "from other machines)")
    p.add_argument("--port", type=count(1, 65535), default=8000, help="the port")
    p.add_argument("--max-body", type=count(1), default=10 * 1024 * 1024, help="the largest request body, in bytes")
    p.add_argument("--max-k", type=count(1), default=1000, help="the most results one request may ask for")
    p.add_argument("--max-waiting", type=count(1), default=32,
                   help="searches in flight before more are answered 503")
    p.add_argument("--keys", help="API keys (a file from `dualtower keys add`): every request but the page's needs "
                                  "one; required with a --host other than loopback")
    p.add_argument("--cors", action="append", metavar="ORIGIN",
                   help="let pages of this origin call the service (repeat; none by default)")
    p.set_defaults(func=_cmd_serve)
