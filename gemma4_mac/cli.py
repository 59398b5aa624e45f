"""Command line: `python -m gemma4_mac ask --model PATH "question"` streams the answer to stdout."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence, TextIO


class CliError(Exception):
    """A problem with the command's input; printed as one line, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m gemma4_mac", description="Gemma 4 on your Mac, offline.")
    sub = parser.add_subparsers(dest="command")
    ask = sub.add_parser("ask", help="ask one question and stream the answer")
    ask.add_argument("question", help="the question (or, with --raw, the text to continue)")
    ask.add_argument("--model", required=True, help="folder of a converted model")
    ask.add_argument("--system", help="system prompt")
    ask.add_argument("--think", action="store_true", help="let the model think first (thoughts go to stderr)")
    ask.add_argument("--raw", action="store_true", help="no chat format: continue the text as is (base models)")
    ask.add_argument("--max-tokens", type=int, default=512)
    ask.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    ask.add_argument("--top-p", type=float, default=0.95)
    ask.add_argument("--top-k", type=int, default=64)
    ask.add_argument("--seed", type=int)
    ask.add_argument("--image", action="append", default=[], metavar="FILE", help="attach an image (repeatable)")
    ask.add_argument("--audio", action="append", default=[], metavar="FILE", help="attach audio (repeatable)")
    ask.add_argument("--video", action="append", default=[], metavar="FILE", help="attach a video (repeatable)")
    sub.add_parser("serve", help="serve the model to local apps over an OpenAI-compatible HTTP API "
                                 "(python -m gemma4_mac serve --help)", add_help=False)
    plan = sub.add_parser("plan", help="print memory needs of the Gemma 4 variants, or of one model folder")
    plan.add_argument("--model", help="folder of a converted model (default: the published variants)")
    plan.add_argument("--context", type=int, action="append", help="context length in tokens (repeatable)")
    return parser


def run_plan(args: argparse.Namespace, out: TextIO) -> int:
    """Print the planner's tables: weights, KV (16/8/4-bit) and prefill scratch per context, and the
    largest context per Mac memory size."""
    from mlx_model.planner import (GIB, format_mac_table, format_table, largest_context, mac_table, plan,
                                   variant_table)

    contexts = tuple(args.context or (8192, 32768, 131072, 262144))
    if not args.model:
        out.write(format_table(variant_table(contexts)) + "\n\n")
        out.write(format_mac_table(mac_table() + mac_table(kv_bits=8)) + "\n")
        return 0
    from mlx_model.config import ModelConfig
    from mlx_model.loader import ModelLoadError, check_model_path, read_config, weight_files

    path = Path(args.model).expanduser()
    try:
        check_model_path(path)
        config = ModelConfig.from_dict(read_config(path)).text_config
        weights = sum(f.stat().st_size for f in weight_files(path))
    except (ModelLoadError, ValueError) as error:
        raise CliError(str(error)) from error
    import psutil

    from .model_manager import format_size

    total = psutil.virtual_memory().total
    for context in contexts:
        for bits in (None, 8, 4):
            p = plan(config, context, kv_bits=bits, weights=weights)
            out.write(f"{context:>7} tokens, {bits or 16:>2}-bit KV: weights {format_size(p.weights)}, "
                      f"KV {format_size(p.kv)}, scratch {format_size(p.scratch)}, "
                      f"total {format_size(p.total)}\n")
    out.write(f"largest context on this machine ({total / GIB:.0f} GiB): "
              f"{largest_context(config, total, weights=weights)} tokens\n")
    return 0


def _user_content(question: str, images: list[str], audio: list[str], videos: list[str]):
    for kind, files in (("image", images), ("audio", audio), ("video", videos)):
        for name in files:
            path = Path(name).expanduser()
            if not path.is_file():
                raise CliError(f"cannot read {kind} file {name}: no such file")
    if not (images or audio or videos):
        return question
    parts = [{"type": "image", "path": str(Path(p).expanduser())} for p in images]
    parts += [{"type": "video", "path": str(Path(p).expanduser())} for p in videos]
    parts += [{"type": "audio", "path": str(Path(p).expanduser())} for p in audio]
    return parts + [{"type": "text", "text": question}]


class ReadingLine:
    """The reading progress of a long prompt on stderr: one line rewritten in place on a terminal, a line
    per chunk otherwise; cleared when the answer starts."""

    def __init__(self, err: TextIO):
        from .progress import ReadingProgress

        self.err = err
        self.progress = ReadingProgress("prompt")
        self.terminal = bool(getattr(err, "isatty", lambda: False)())
        self.open = False

    def update(self, read: int, total: int) -> None:
        from .progress import text_bar

        if not self.progress.update(read, total):
            return
        line = f"{self.progress.text()} {text_bar(self.progress.fraction)}"
        self.err.write(f"\r{line}\033[K" if self.terminal else line + "\n")
        self.err.flush()
        self.open = self.terminal

    def close(self) -> None:
        if self.open:
            self.err.write("\r\033[K")
            self.err.flush()
            self.open = False


def run_ask(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Load the model, stream the answer; thoughts go to `err` marked as such."""
    from mlx_model import ModelLoadError, load

    from .generate import GenerationError, SamplingSettings, stream_generate

    if args.max_tokens <= 0:
        raise CliError("--max-tokens must be a positive number")
    if args.raw and (args.image or args.audio or args.video):
        raise CliError("--raw continues plain text; attachments need the chat format (drop --raw)")
    content = _user_content(args.question, args.image, args.audio, args.video)
    try:
        # a GGUF or weights file, a missing folder, a damaged or incomplete one: refused here, in words
        model, processor = load(Path(args.model).expanduser())
    except ModelLoadError as error:
        raise CliError(str(error)) from error
    sampling = SamplingSettings(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                                seed=args.seed, max_tokens=args.max_tokens)
    messages = []
    if args.system:
        messages.append({"role": "system", "content": args.system})
    messages.append({"role": "user", "content": content})
    try:
        events = stream_generate(model, processor, None if args.raw else messages,
                                 prompt=args.question if args.raw else None,
                                 enable_thinking=args.think, sampling=sampling)
        in_thought = False
        reading = ReadingLine(err)
        for event in events:
            if event.kind == "progress":
                reading.update(*event.progress)
                continue
            reading.close()
            if event.kind == "thought":
                if not in_thought:
                    err.write("[thinking] ")
                    in_thought = True
                err.write(event.text)
                err.flush()
            elif event.kind == "answer":
                if in_thought:
                    err.write("\n")
                    in_thought = False
                out.write(event.text)
                out.flush()
            elif event.kind == "notice":
                err.write(f"[note] {event.text}\n")
            elif event.kind == "tool_call":
                out.write(f"\n[tool call] {json.dumps(event.tool_call, ensure_ascii=False)}\n")
            elif event.kind == "done":
                out.write("\n")
                stats = event.stats
                err.write(f"[{stats.prompt_tokens} prompt tokens, {stats.generation_tokens} generated, "
                          f"{stats.generation_tps:.1f} tok/s, finish: {stats.finish_reason}]\n")
    except (GenerationError, ValueError) as error:
        # ValueError: attachments the model cannot use (MultimodalInputError, unreadable image/audio/video)
        raise CliError(str(error)) from error
    return 0


def main(argv: Optional[Sequence[str]] = None, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """Entry point for the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "ask":
            return run_ask(args, out, err)
        if args.command == "plan":
            return run_plan(args, out)
        parser.print_help(err)
        return 2
    except CliError as error:
        err.write(f"error: {error}\n")
        return 2
    except KeyboardInterrupt:
        err.write("\ninterrupted\n")
        return 130
