"""`python -m convert SRC DST [--bits 4|8] [--group-size 32|64] [--no-quantize] [--dtype ...] [--force]
[--base-model] [--drafter SRC] [--uniform] [--calibrate] [--skip-quality-check]`."""

from __future__ import annotations

import argparse
import json
import sys

from .errors import ConversionError
from .pipeline import DTYPES, convert_checkpoint
from .progress import ConversionProgress
from .quality import QUALITY_FILE, describe_quality


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(
        prog="python -m convert",
        description="Convert a Gemma 4 / Gemma 3 checkpoint (Hugging Face folder, hub repo id, or GGUF file) "
                    "into an MLX model folder.")
    parser.add_argument("src", help="checkpoint folder, hub repo id (owner/name, or owner/name/file.gguf), "
                                    "or a .gguf file")
    parser.add_argument("dst", help="output folder (must not exist unless --force)")
    parser.add_argument("--bits", type=int, choices=(4, 8), default=4,
                        help="quantization bits (default 4: Gemma 4's recipe, sensitive modules at 8 bits)")
    parser.add_argument("--group-size", type=int, choices=(32, 64), default=64,
                        help="quantization group size (default 64)")
    parser.add_argument("--no-quantize", action="store_true", help="keep every weight in float (--dtype)")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="bfloat16",
                        help="float type for unquantized weights, scales and biases (default bfloat16)")
    parser.add_argument("--force", action="store_true", help="replace DST if it exists")
    parser.add_argument("--base-model", action="store_true",
                        help="a base model that only continues text: it needs no chat template")
    parser.add_argument("--drafter", metavar="SRC",
                        help="the model's MTP drafter (folder or hub repo id, e.g. "
                             "google/gemma-4-E2B-it-assistant), converted into DST/drafter like the model: "
                             "same answers, faster")
    parser.add_argument("--uniform", action="store_true",
                        help="every module at --bits (router at 8) instead of Gemma 4's mixed-precision recipe")
    parser.add_argument("--calibrate", action="store_true",
                        help="tune the 4-bit scales against the source's predictions (DWQ; takes minutes)")
    parser.add_argument("--skip-quality-check", action="store_true",
                        help="do not compare the result with the source (no quality.json, nothing refused)")
    return parser


class _StatusLine:
    """One rewritten status line on a terminal; one line per stage and per 10% when logging to a file."""

    def __init__(self):
        self.last, self.logged = "", ("", -1)
        self.interactive = sys.stderr.isatty()

    def __call__(self, report: ConversionProgress) -> None:
        line = f"[{report.stage:9s}] {report.fraction * 100:5.1f}% {report.message[:90]}"
        if report.stage == "download" and report.total > 1:  # bytes: show how much of how much
            line += f" ({report.done / 1e9:.2f} of {report.total / 1e9:.2f} GB)"
        if self.interactive:
            if line != self.last:
                sys.stderr.write("\r" + line.ljust(len(self.last)))
                sys.stderr.flush()
                self.last = line
            return
        key = (report.stage, int(report.fraction * 10))
        if key != self.logged:
            sys.stderr.write(line + "\n")
            self.logged = key


def main(argv: list[str] | None = None) -> int:
    """Run a conversion; returns the process exit status (0 ok, 1 conversion error, 130 interrupted)."""
    args = build_parser().parse_args(argv)
    try:
        out = convert_checkpoint(args.src, args.dst, bits=args.bits, group_size=args.group_size,
                                 quantize=not args.no_quantize, dtype=args.dtype, force=args.force,
                                 progress=_StatusLine(), uniform=args.uniform, calibrate=args.calibrate,
                                 skip_quality_check=args.skip_quality_check,
                                 metadata={"chat": False} if args.base_model else None)
        if args.drafter:
            from .drafter import convert_drafter

            convert_drafter(args.drafter, out, progress=_StatusLine())
    except ConversionError as error:
        sys.stderr.write(f"\nerror: {error}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("\ninterrupted: no model was written; a download continues where it stopped next time.\n")
        return 130
    sys.stderr.write(f"\nDone: {out}\n")
    quality = out / QUALITY_FILE
    if quality.is_file():
        sys.stderr.write(describe_quality(json.loads(quality.read_text(encoding="utf-8"))) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
