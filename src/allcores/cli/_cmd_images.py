"""``allcores images``: prepare a folder of images on every core (a thin layer over
:func:`allcores.images.process`)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from allcores.cli import add_backend_args

SAMPLES_FOLDER = "_samples"

_DESCRIPTION = """\
Find every image under SRC (JPEG, PNG, WebP, TIFF, BMP, GIF; recursively), turn it upright
from its EXIF orientation, convert and resize it, and write it to the same relative path under
DST, on every core. Re-running skips images already done; bad images are listed (and saved in
DST/allcores-failures.json) and the run goes on. Exit status: 0 all done, 1 some images failed,
2 bad usage, 130 interrupted (a re-run resumes)."""

_EPILOG = """\
examples:
  allcores images photos thumbs --size 256            fit inside 256x256, same formats
  allcores images photos train --size 224 --resize fill --format jpeg --dataset train.npz
  allcores images --sample 500 demo-out --size 256    500 generated images in demo-out/_samples
  allcores images photos thumbs --size 256 --json --compare-serial"""


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "images",
        help="resize, orient, convert images and build datasets on every core",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        usage="allcores images [options] SRC DST\n       allcores images --sample N [options] DST",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("paths", nargs="*", metavar="SRC DST", help=argparse.SUPPRESS)
    what = p.add_argument_group("what to do to each image")
    what.add_argument("--size", metavar="N|WxH",
                      help="resize into this box (256 means 256x256); default: keep sizes")
    what.add_argument("--resize", choices=("fit", "fill", "exact"), default="fit",
                      help="fit inside the box keeping the aspect, never enlarging (default); "
                           "fill the box and centre-crop; or stretch to exactly the box")
    what.add_argument("--mode", choices=("keep", "RGB", "L", "RGBA"), default="keep",
                      type=lambda s: s if s == "keep" else s.upper(),
                      help="convert to this mode (L is greyscale); default: keep")
    what.add_argument("--format", choices=("keep", "jpeg", "png", "webp", "tiff", "bmp", "gif"),
                      default="keep", type=str.lower,
                      help="output format (changes the extension); default: keep each one's")
    what.add_argument("--quality", type=int, default=85, metavar="Q",
                      help="JPEG/WebP quality 1-100 (default: 85)")
    what.add_argument("--dataset", metavar="FILE.npy|FILE.npz",
                      help="also write one uint8 N x H x W x C array with names and labels "
                           "(labels: first-level folder names); needs --size; relative to DST "
                           "(a path outside DST is refused)")
    what.add_argument("--max-pixels", type=int, default=None, metavar="N",
                      help="refuse bigger images as decompression bombs (default: Pillow's, "
                           "about 89 million)")
    run = p.add_argument_group("how to run")
    run.add_argument("--workers", "-j", type=int, default=None, metavar="N",
                     help="processes to use (default: every core)")
    run.add_argument("--follow-links", action="store_true",
                     help="also read symbolic links under SRC that lead outside it (by "
                          "default they are listed as failures and not read)")
    add_backend_args(run)
    run.add_argument("--force", action="store_true",
                     help="redo every image, even those already done")
    run.add_argument("--compare-serial", action="store_true",
                     help="also time the same images on one core and print the speedup")
    run.add_argument("--json", action="store_true",
                     help="print the summary as one JSON object (and no progress bar)")
    run.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                     help="show a progress bar (default: when stderr is a terminal)")
    run.add_argument("--report", metavar="FILE.html", default=None,
                     help="write an HTML report of where the run's time went")
    sample = p.add_argument_group("built-in sample images")
    sample.add_argument("--sample", type=int, default=None, metavar="N",
                        help=f"first generate N photo-like images in DST/{SAMPLES_FOLDER} "
                             "(deterministic; kept for the next run) and use them as SRC")
    sample.add_argument("--seed", type=int, default=0, help="seed of --sample (default: 0)")
    p.set_defaults(handler=_handle, _parser=p)


def _handle(args: argparse.Namespace) -> int:
    from allcores.cli import missing_extra

    try:
        import PIL  # noqa: F401
    except ImportError:
        raise missing_extra("Pillow", "images")
    if args.sample is not None or args.dataset is not None:
        try:
            import numpy  # noqa: F401
        except ImportError:
            raise missing_extra("numpy", "images")
    import allcores.images

    parser: argparse.ArgumentParser = args._parser
    if args.sample is not None:
        if len(args.paths) != 1:
            parser.error("with --sample, give only DST (the samples go in DST/_samples)")
        if args.sample < 1:
            parser.error("--sample needs a count of at least 1")
        dst = args.paths[0]
        src = os.path.join(dst, SAMPLES_FOLDER)
    else:
        if len(args.paths) != 2:
            parser.error("give SRC and DST (or --sample N DST to use generated images)")
        src, dst = args.paths
    progress = args.progress if args.progress is not None else sys.stderr.isatty()
    if args.json:
        progress = False
    from allcores._batch import resolve_workers

    try:
        resolve_workers(args.workers)
    except ValueError as exc:
        parser.error(f"--workers: {exc}")
    report_in_dst = args.report is not None and os.path.realpath(
        os.path.dirname(os.path.abspath(args.report))) == os.path.realpath(dst)
    if args.report is not None and not report_in_dst:  # DST is made by the run itself
        from allcores._report import check_path

        try:
            check_path(args.report)  # before the samples and the run, not after them
        except (OSError, ImportError) as exc:
            print(f"allcores images: error: {exc}", file=sys.stderr)
            return 2

    if args.sample is not None:
        start = time.perf_counter()
        allcores.images.make_samples(src, args.sample, seed=args.seed, workers=args.workers)
        if not args.json:
            print(f"allcores images: {args.sample} sample images ready in {src} "
                  f"({time.perf_counter() - start:.1f} s)", file=sys.stderr)
    options: dict[str, Any] = {}
    if args.max_pixels is not None:
        options["max_pixels"] = args.max_pixels
    try:
        summary = allcores.images.process(
            src,
            dst,
            size=args.size,
            resize=args.resize,
            mode=None if args.mode == "keep" else args.mode,
            format=None if args.format == "keep" else args.format,
            quality=args.quality,
            dataset=args.dataset,
            workers=args.workers,
            compare_serial=args.compare_serial,
            force=args.force,
            progress=progress,
            follow_links=args.follow_links,
            report=args.report,
            **options,
        )
    except (ValueError, OSError) as exc:  # bad options, SRC missing, DST not writable
        print(f"allcores images: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(summary.to_json())
    else:
        print(summary.render())
    return 0 if summary.ok else 1
