"""``clipwatch synth OUT``: write the synthetic motion-defined action dataset in the UCF101 layout."""

from __future__ import annotations

import argparse

from pipeline.cli import COMMAND_HELP
from pipeline.data import SYNTH_CLASSES, SYNTH_NOVEL_CLASSES, synthesize
from pipeline.data.pretrain import PRETRAIN_CLASSES, synthesize_pretrain
from pipeline.data.synth import DEFAULT_NUM_FRAMES, DEFAULT_VIDEOS_PER_CLASS
from pipeline.data.yard import YARD_CLASSES, synthesize_yard
from pipeline.errors import ClipwatchError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "synth", help=COMMAND_HELP["synth"],
        description=f"Classes: {', '.join(SYNTH_CLASSES)}. Novel: {', '.join(SYNTH_NOVEL_CLASSES)}. "
                    f"--world yard writes a second world nobody tunes on (static-camera yards, small actors; "
                    f"classes {', '.join(YARD_CLASSES)}; 160x120, 64 frames, 40 videos per class unless given). "
                    f"--world pretrain writes the pretraining corpus ({len(PRETRAIN_CLASSES)} classes of combined "
                    "translation, rotation and scaling; 128x96, 40 frames, 25 videos per class unless given).")
    parser.add_argument("--world", choices=("default", "yard", "pretrain"), default="default",
                        help="which synthetic world (default %(default)s)")
    parser.add_argument("out", help="output folder (created; must be empty unless --overwrite)")
    parser.add_argument("--videos-per-class", type=int, default=None,
                        help=f"videos per class, spread over the 25 UCF101 groups (default {DEFAULT_VIDEOS_PER_CLASS})")
    parser.add_argument("--novel-videos-per-class", type=int, default=None,
                        help="videos per novel class (default: as --videos-per-class)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; equal seeds give equal videos")
    parser.add_argument("--width", type=int, default=None, help="default 320 (yard: 160)")
    parser.add_argument("--height", type=int, default=None, help="default 240 (yard: 120)")
    parser.add_argument("--fps", type=float, default=25.0)
    parser.add_argument("--frames", type=int, default=None, help=f"frames per video (default {DEFAULT_NUM_FRAMES}; "
                                                                 "yard: 64)")
    parser.add_argument("--classes", nargs="+", metavar="CLASS", help="subset of the in-distribution classes")
    parser.add_argument("--actor-scale", type=float, default=None,
                        help="actor size times this, 0-1 (default and pretrain worlds; default world at 0.45: moving actors "
                             "10-19 %% of the frame height)")
    parser.add_argument("--novel-classes", nargs="*", metavar="CLASS",
                        help="subset of the novel classes (give none to skip OUT/novel)")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty OUT")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    given = {name: value for name, value in (("videos_per_class", args.videos_per_class), ("width", args.width),
                                             ("height", args.height), ("num_frames", args.frames))
             if value is not None}
    if args.world in ("yard", "pretrain"):
        ignored = [option for option, value in (("--classes", args.classes), ("--novel-classes", args.novel_classes),
                                                ("--novel-videos-per-class", args.novel_videos_per_class),
                                                ("--actor-scale", None if args.world == "pretrain" else args.actor_scale))
                   if value is not None]
        if ignored:
            raise ClipwatchError(f"--world {args.world} writes all its classes and no novel set: drop "
                                 f"{', '.join(ignored)}")
        if args.world == "pretrain" and args.actor_scale is not None:
            given["actor_scale"] = args.actor_scale
        write = synthesize_yard if args.world == "yard" else synthesize_pretrain
        report = write(args.out, seed=args.seed, fps=args.fps, overwrite=args.overwrite, progress=not args.no_progress,
                       **given)
    else:
        report = synthesize(
            args.out, novel_videos_per_class=args.novel_videos_per_class, seed=args.seed, fps=args.fps,
            classes=args.classes, novel_classes=args.novel_classes, overwrite=args.overwrite,
            actor_scale=1.0 if args.actor_scale is None else args.actor_scale,
            progress=not args.no_progress, **given)
    novel = f", {report.num_novel_videos} novel in {report.novel_root}" if report.novel_root else ""
    print(f"wrote {report.num_videos} videos ({len(report.classes)} classes) to {report.root}{novel}: "
          f"{report.total_bytes / 1e6:.1f} MB in {report.seconds:.1f} s ({report.seconds_per_video:.3f} s/video)")
    return 0
