"""Command line: `python -m gemma4_mac ask --model PATH "question"` streams the answer to stdout."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence, TextIO

from .agent import DEFAULT_MAX_STEPS
from .builtin_tools import BUILTIN_NAMES
from .cli_stream import print_events
from .links import SPLITS
from .ringwatch import DEFAULT_TIMEOUT as DEFAULT_PEER_TIMEOUT


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
    ask.add_argument("--draft", choices=("auto", "mtp", "lookup", "off"), default="auto",
                     help="speculative decoding (same answer, faster where it pays): auto = the "
                          "model's MTP drafter and prompt lookup at an adaptive depth (default); mtp or "
                          "lookup alone; off")
    ask.add_argument("--image", action="append", default=[], metavar="FILE", help="attach an image (repeatable)")
    ask.add_argument("--audio", action="append", default=[], metavar="FILE", help="attach audio (repeatable)")
    ask.add_argument("--video", action="append", default=[], metavar="FILE", help="attach a video (repeatable)")
    ask.add_argument("--mcp", metavar="CONFIG.json",
                     help="let the model use the tools of these MCP servers ({\"mcpServers\": {...}}, as Claude "
                          "Desktop and LM Studio write it)")
    ask.add_argument("--builtin", action="append", default=[], choices=BUILTIN_NAMES, metavar="TOOL",
                     help=f"also offer a built-in tool: {', '.join(BUILTIN_NAMES)} (repeatable)")
    ask.add_argument("--yes", action="store_true", help="allow tools that write without asking")
    ask.add_argument("--max-steps", type=int, default=DEFAULT_MAX_STEPS,
                     help="most model turns with tools (default %(default)s)")
    ask.add_argument("--hosts", metavar="HOSTS.JSON",
                     help="split the model across the Macs of this MLX hostfile, this Mac first "
                          "(docs/distributed.md)")
    ask.add_argument("--split", choices=SPLITS, default="auto",
                     help="with --hosts: split the model by layers (for Ethernet and Wi-Fi) or by heads (for "
                          "Thunderbolt); auto picks by the link (default)")
    ask.add_argument("--peer-timeout", type=float, default=DEFAULT_PEER_TIMEOUT, metavar="SECONDS",
                     help="with --hosts: give up when a model step waits this long for another Mac "
                          "(default %(default)s)")
    sub.add_parser("serve", help="serve the model to local apps over an OpenAI-compatible HTTP API "
                                 "(python -m gemma4_mac serve --help)", add_help=False)
    mcp = sub.add_parser("mcp", help="MCP servers: `mcp list CONFIG.json` prints the tools of each server")
    mcp.add_argument("action", choices=("list",), help="list: start each server and print its tools")
    mcp.add_argument("config", metavar="CONFIG.json", help="the MCP configuration ({\"mcpServers\": {...}})")
    plan = sub.add_parser("plan", help="print memory needs of the Gemma 4 variants, or of one model folder")
    plan.add_argument("--model", help="folder of a converted model (default: the published variants)")
    plan.add_argument("--context", type=int, action="append", help="context length in tokens (repeatable)")
    plan.add_argument("--macs", type=int, default=1, help="split each model across this many Macs")
    return parser


def run_plan(args: argparse.Namespace, out: TextIO) -> int:
    """Print the planner's tables: weights, KV (16/8/4-bit) and prefill scratch per context, and the
    largest context per Mac memory size."""
    from mlx_model.planner import (GIB, format_mac_table, format_table, largest_context, mac_table, plan,
                                   variant_table)

    contexts = tuple(args.context or (8192, 32768, 131072, 262144))
    if args.macs < 1:
        raise CliError("--macs must be at least 1")
    if args.macs > 1:
        return _run_split_plan(args, contexts, out)
    if not args.model:
        out.write(format_table(variant_table(contexts)) + "\n\n")
        out.write(format_mac_table(mac_table() + mac_table(kv_bits=8)) + "\n")
        return 0
    config, weights = _folder_text_config(args.model)
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


def _folder_text_config(folder: str):
    """(text config, weight bytes on disk) of a converted model folder, for `plan --model`."""
    from mlx_model.config import ModelConfig
    from mlx_model.loader import ModelLoadError, check_model_path, read_config, weight_files

    path = Path(folder).expanduser()
    try:
        check_model_path(path)
        config = ModelConfig.from_dict(read_config(path)).text_config
        return config, sum(f.stat().st_size for f in weight_files(path))
    except (ModelLoadError, ValueError) as error:
        raise CliError(str(error)) from error


def _is_base_model_folder(model: str) -> bool:
    """Whether `model` is a converted folder recorded as a base model (`"gemma4_mac": {"chat": false}`: the
    starter, `convert --base-model`); the window continues such a model's text, and so does `ask`."""
    from mlx_model.model_folder import is_base_model

    config = Path(model).expanduser() / "config.json"
    try:
        return config.is_file() and is_base_model(json.loads(config.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return False  # unreadable: the loader says what is wrong with it


def _run_split_plan(args: argparse.Namespace, contexts: tuple, out: TextIO) -> int:
    """`plan --macs N`: memory on each Mac with the model split across N of them."""
    from mlx_model.planner import format_split_table, split_plan, split_table

    from .model_manager import format_size

    if not args.model:
        rows = split_table(args.macs, tuple(args.context or (32768, 262144)))
        out.write(format_split_table(rows, args.macs) + "\n")
        return 0
    from mlx_model.sharding import ShardingError

    config, weights = _folder_text_config(args.model)
    for split in ("heads", "layers"):
        try:
            plans = [(context, bits, split_plan(config, context, args.macs, kv_bits=bits, weights=weights,
                                                split=split)) for context in contexts for bits in (None, 8, 4)]
        except ShardingError as error:
            out.write(f"split by {split}: {error}\n")
            continue
        for context, bits, p in plans:
            out.write(f"{context:>7} tokens, {bits or 16:>2}-bit KV, by {split:<6} on each of {args.macs} "
                      f"Macs: weights {format_size(p.weights)}, KV {format_size(p.kv)}, scratch "
                      f"{format_size(p.scratch)}, total {format_size(p.total)}\n")
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


def run_ask(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Load the model (split across Macs with --hosts), stream the answer."""
    from mlx_model import ModelLoadError, load

    if args.max_tokens <= 0:
        raise CliError("--max-tokens must be a positive number")
    if args.raw and (args.image or args.audio or args.video):
        raise CliError("--raw continues plain text; attachments need the chat format (drop --raw)")
    if args.raw and (args.mcp or args.builtin):
        raise CliError("--raw continues plain text; tools need the chat format (drop --raw)")
    if args.max_steps < 1:
        raise CliError("--max-steps must be at least 1")
    registry = None
    if args.mcp or args.builtin:
        from .cli_tools import ToolSetupError, registry_for

        try:
            registry = registry_for(args.mcp, args.builtin)
        except ToolSetupError as error:
            raise CliError(str(error)) from error
    if not args.raw and _is_base_model_folder(args.model):
        if args.image or args.audio or args.video or args.mcp or args.builtin or args.system or args.think:
            raise CliError("this is a base model: it continues text and has no chat format, so it cannot take "
                           "attachments, tools, --system or --think; ask an instruction-tuned (-it) model")
        err.write("[note] a base model: continuing your text as is (as --raw does)\n")
        args.raw = True
    content = _user_content(args.question, args.image, args.audio, args.video)
    cluster = None
    try:
        if args.hosts:
            from .cluster import ClusterError, start

            try:
                cluster = start(args.hosts, args.model, peer_timeout=args.peer_timeout, split=args.split,
                                err=err)
            except ClusterError as error:
                raise CliError(str(error)) from error
        try:
            # a GGUF or weights file, a missing folder, a damaged or incomplete one: refused here, in words
            model, processor = load(Path(args.model).expanduser(), group=cluster.group if cluster else None,
                                    split=cluster.split if cluster else "heads")
        except ModelLoadError as error:
            raise CliError(str(error)) from error
        if cluster is not None:
            from .distributed import LeaderModel, PeerLostError

            try:
                model = LeaderModel(model, cluster.group, cluster.watchdog)
            except PeerLostError as error:  # a follower could not load its shard
                raise CliError(str(error)) from error
        try:
            return _answer(args, model, processor, content, registry, out, err)
        finally:
            if cluster is not None:
                model.close()
    finally:
        if cluster is not None:
            cluster.close()


def _answer(args: argparse.Namespace, model, processor, content, registry, out: TextIO, err: TextIO) -> int:
    """Stream the answer to one question; thoughts go to `err` marked as such."""
    from mlx_model.assistant import attached_drafter

    from .generate import GenerationError, SamplingSettings, stream_generate

    sampling = SamplingSettings(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                                seed=args.seed, max_tokens=args.max_tokens, draft=args.draft)
    if args.draft == "mtp" and attached_drafter(model) is None:
        err.write("[note] this model folder has no MTP drafter (convert one with `python -m convert ... "
                  "--drafter`); answering without drafting\n")
    messages = []
    if args.system:
        messages.append({"role": "system", "content": args.system})
    messages.append({"role": "user", "content": content})
    try:
        if registry is not None:
            _ask_with_tools(args, model, processor, messages, sampling, registry, out, err)
            return 0
        events = stream_generate(model, processor, None if args.raw else messages,
                                 prompt=args.question if args.raw else None,
                                 enable_thinking=args.think, sampling=sampling)
        print_events(events, out, err, show_calls=True)
    except (GenerationError, ValueError) as error:
        # ValueError: attachments the model cannot use (MultimodalInputError, unreadable image/audio/video)
        raise CliError(str(error)) from error
    finally:
        if registry is not None:
            registry.close()
    return 0


def _ask_with_tools(args, model, processor, messages, sampling, registry, out: TextIO, err: TextIO) -> None:
    """`ask --mcp`: the agent loop, each model turn constrained to the tools' schemas, one cache for all."""
    from .cli_tools import ask_with_tools
    from .constrained import agent_processors, factory_for
    from .generate import prepare_prompt, run_prompt
    from .session import ChatSession

    session = ChatSession(model)
    factory = factory_for(model, processor.tokenizer)

    def step_events(conversation, tools, schemas, allow_calls):
        prepared = prepare_prompt(processor, conversation, tools=tools, enable_thinking=args.think)
        processors = agent_processors(factory, schemas, allow_calls=allow_calls,
                                      in_thought=prepared.opens_thought) if tools else None
        return run_prompt(model, processor, prepared, sampling, session=session, logits_processors=processors)

    ask_with_tools(registry, messages, step_events=step_events, out=out, err=err, allow_writes=args.yes,
                   max_steps=args.max_steps, can_see=bool(getattr(processor, "can_see", False)))


def main(argv: Optional[Sequence[str]] = None, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """Entry point for the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "ask":
            return run_ask(args, out, err)
        if args.command == "plan":
            return run_plan(args, out)
        if args.command == "mcp":
            from .cli_tools import ToolSetupError, run_mcp_list

            try:
                return run_mcp_list(args.config, out, err)
            except ToolSetupError as error:
                raise CliError(str(error)) from error
        parser.print_help(err)
        return 2
    except CliError as error:
        err.write(f"error: {error}\n")
        return 2
    except KeyboardInterrupt:
        err.write("\ninterrupted\n")
        return 130
