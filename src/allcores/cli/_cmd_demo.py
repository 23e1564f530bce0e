"""``allcores demo``: the main job on built-in data, serial against every core (``make demo``)."""

from __future__ import annotations

import argparse
import os
from typing import Any

#: Sized to finish in well under a minute on a 2-core machine, samples included.
DEMO_IMAGES = 300
DEMO_FOLDER = "demo-out"
#: The HTML run report of the demo, written in its folder.
REPORT_FILE = "report.html"


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "demo",
        help=f"prepare {DEMO_IMAGES} generated photos on every core and show the speedup",
        description=(
            f"Generate {DEMO_IMAGES} photo-like sample images in ./{DEMO_FOLDER}/_samples (kept "
            "for the next run), then make 256x256 thumbnails and a dataset of them on every "
            "core, time the same work on one core, and print the summary. Runs: "
            f"allcores images --sample {DEMO_IMAGES} {DEMO_FOLDER} --size 256 --resize fill "
            "--dataset dataset.npz --compare-serial --force --report DIR/report.html (the "
            "HTML run report, beside the outputs)"
        ),
    )
    p.add_argument("--out", default=DEMO_FOLDER, metavar="DIR",
                   help=f"where to put everything (default: ./{DEMO_FOLDER})")
    p.add_argument("--images", type=int, default=DEMO_IMAGES, metavar="N",
                   help=f"how many sample images (default: {DEMO_IMAGES})")
    p.add_argument("--workers", "-j", type=int, default=None, metavar="N",
                   help="processes to use (default: every core)")
    p.set_defaults(handler=_handle)


def _handle(args: argparse.Namespace) -> int:
    from allcores.cli import main

    argv = [
        "images", "--sample", str(args.images), args.out,
        "--size", "256", "--resize", "fill", "--dataset", "dataset.npz",
        # --force: redo the work each time, so a second demo still shows the speedup
        "--compare-serial", "--force",
        # where the time went, beside the outputs (docs/report.md); its path is printed last
        "--report", os.path.join(args.out, REPORT_FILE),
    ]
    if args.workers is not None:
        argv += ["--workers", str(args.workers)]
    print("allcores demo: allcores " + " ".join(argv), flush=True)
    return main(argv)
