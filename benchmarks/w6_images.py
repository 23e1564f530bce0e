"""W6 of ../shared/benchmarks.md: 300 photo-sized JPEGs to 256-pixel thumbnails.

Each task opens a 1600x1200 JPEG (gradient + noise + shapes, quality 90), converts it to RGB,
fits it inside 256x256 and saves it as JPEG quality 85. Systems, side by side in one run:

| system              | what runs                                                               |
|---------------------|-------------------------------------------------------------------------|
| serial Pillow       | the plain script: ``open -> convert("RGB") -> thumbnail -> save``, one core |
| mp.Pool Pillow      | the same script under ``multiprocessing.Pool(2).map``                   |
| serial steps        | allcores.images' per-image function in a plain loop, one core (what     |
|                     | ``--compare-serial`` measures)                                          |
| mp.Pool steps       | that same function under ``multiprocessing.Pool(2).map``                |
| allcores 1 worker   | ``allcores.images.process(..., workers=1)``                            |
| allcores 2 workers  | ``allcores.images.process(..., workers=2)``: the real thing            |

The issue's targets, printed as ratios at the end:

- speedup of ``allcores 2 workers`` over ``serial steps`` (the same steps on one core) >= 1.85;
- ``allcores 2 workers`` at least as fast as ``mp.Pool steps`` (and ``mp.Pool Pillow``);
- per image, ``allcores 1 worker`` no slower than ``serial Pillow`` (the plain steps it wraps)
  and within noise of ``serial steps`` (the engine adds no measurable cost).

Run: ``python benchmarks/w6_images.py`` (300 images, 3 rounds) or
``--images 40 --rounds 1`` for a smoke test. The inputs are generated once (on every core)
into ``--dir`` and reused.
"""

from __future__ import annotations

import argparse
import functools
import multiprocessing
import os
import shutil
import sys
import tempfile

from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _harness  # noqa: E402
import allcores  # noqa: E402
import allcores.images  # noqa: E402
from allcores.images import _samples  # noqa: E402
from allcores.images._steps import Item, Job, Steps, process_one  # noqa: E402

WIDTH, HEIGHT = 1600, 1200
BOX = 256
QUALITY_IN = 90
QUALITY_OUT = 85
SEED = 6
WORKERS = 2
#: Even the slow serial rounds (about 5 s for 300 images) get all their timed rounds.
LONG_ROUND_S = 120.0


def _make_input(args: tuple[str, int]) -> None:
    folder, index = args
    path = os.path.join(folder, f"w6_{index:04d}.jpg")
    if not os.path.exists(path):
        img = _samples.photo(index, SEED, (WIDTH, HEIGHT))
        img.save(path + ".part", "JPEG", quality=QUALITY_IN)
        os.replace(path + ".part", path)


def make_inputs(folder: str, count: int) -> list[str]:
    os.makedirs(folder, exist_ok=True)
    allcores.map(_make_input, [(folder, i) for i in range(count)])
    return [os.path.join(folder, f"w6_{i:04d}.jpg") for i in range(count)]


def plain_pillow(args: tuple[str, str]) -> None:
    """What a user's script does, step by step, with Pillow's defaults."""
    src, out = args
    with Image.open(src) as img:
        img = img.convert("RGB")
        img.thumbnail((BOX, BOX))
        img.save(out, "JPEG", quality=QUALITY_OUT)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    _harness.add_common_args(parser)
    parser.add_argument("--images", type=int, default=300, help="number of input JPEGs")
    parser.add_argument("--dir", default=None,
                        help="where the inputs are cached (default: a folder in the temp dir)")
    args = parser.parse_args(argv)

    folder = args.dir or os.path.join(tempfile.gettempdir(), f"allcores-w6-{args.images}")
    files = make_inputs(os.path.join(folder, "in"), args.images)
    scratch = tempfile.mkdtemp(prefix="allcores-w6-out-")
    steps = Steps(size=(BOX, BOX), mode="RGB", quality=QUALITY_OUT)
    job = Job(steps, force=True)

    def outdir(name: str) -> str:
        path = os.path.join(scratch, name)
        os.makedirs(path, exist_ok=True)
        return path

    plain_args = {
        name: [(f, os.path.join(outdir(name), os.path.basename(f))) for f in files]
        for name in ("serial Pillow", "mp.Pool Pillow")
    }
    step_items = {
        name: [Item(i, f, os.path.join(outdir(name), os.path.basename(f)))
               for i, f in enumerate(files)]
        for name in ("serial steps", "mp.Pool steps")
    }
    fn = functools.partial(process_one, job)

    def check_steps(outcomes: list) -> None:
        bad = [o for o in outcomes if o.status != "done"]
        assert not bad, bad[:3]

    def check_summary(summary: allcores.images.Summary) -> None:
        assert summary.done == len(files) and summary.ok, summary.render()

    def run_process(workers: int) -> allcores.images.Summary:
        return allcores.images.process(
            os.path.dirname(files[0]), os.path.join(scratch, f"allcores-{workers}"),
            size=BOX, mode="RGB", quality=QUALITY_OUT, workers=workers, force=True,
        )

    def mp_map(func, items):
        with multiprocessing.Pool(WORKERS) as pool:
            return pool.map(func, items)

    systems = {
        "serial Pillow": (lambda: [plain_pillow(a) for a in plain_args["serial Pillow"]], None),
        "mp.Pool Pillow": (lambda: mp_map(plain_pillow, plain_args["mp.Pool Pillow"]), None),
        "serial steps": (lambda: [fn(i) for i in step_items["serial steps"]], check_steps),
        "mp.Pool steps": (lambda: mp_map(fn, step_items["mp.Pool steps"]), check_steps),
        "allcores 1 worker": (lambda: run_process(1), check_summary),
        "allcores 2 workers": (lambda: run_process(WORKERS), check_summary),
    }
    chosen = _harness.pick(args.systems, systems, "system")
    print(_harness.machine_line())
    print(f"W6: {len(files)} JPEGs {WIDTH}x{HEIGHT} q{QUALITY_IN} -> fit {BOX}, JPEG "
          f"q{QUALITY_OUT}; {WORKERS} workers; {args.rounds} timed rounds after one warm-up\n")
    results: dict[str, _harness.Timing] = {}
    try:
        for name in chosen:
            run, check = systems[name]
            timing = _harness.measure(run, rounds=args.rounds, check=check,
                                      long_round_s=LONG_ROUND_S)
            results[name] = timing
            per_image = timing.median / len(files) * 1000 if timing.ok else float("nan")
            rate = len(files) / timing.median if timing.ok else float("nan")
            status = timing.error or f"{timing.median:.3f} s (+-{timing.spread_pct:.0f}%)"
            print(f"  {name:20s} {status:>22s}  {rate:7.1f} images/s  {per_image:6.2f} ms/image",
                  flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        allcores.shutdown()

    table = {"W6": results}
    print()
    print(_harness.render_table(table, systems=chosen, baseline="serial steps"))
    print()
    pairs = [
        ("speedup over one core, same steps (target >= 1.85)", "serial steps",
         "allcores 2 workers"),
        ("vs mp.Pool.map, same steps (target >= 1.00)", "mp.Pool steps", "allcores 2 workers"),
        ("vs mp.Pool.map, plain Pillow script", "mp.Pool Pillow", "allcores 2 workers"),
        ("vs the plain Pillow script on one core", "serial Pillow", "allcores 2 workers"),
        ("one core: plain Pillow steps / allcores 1 worker (target >= 1.00)", "serial Pillow",
         "allcores 1 worker"),
        ("one core: serial steps / allcores 1 worker (engine cost; ~1.00)", "serial steps",
         "allcores 1 worker"),
    ]
    pairs = [p for p in pairs if p[1] in results and p[2] in results]
    print(_harness.render_ratio_table(table, pairs=pairs))
    if args.json:
        _harness.write_json(args.json, {"machine": _harness.machine_info(), "images": len(files),
                                        "results": table})
    return 0


if __name__ == "__main__":
    sys.exit(main())
