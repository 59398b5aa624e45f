"""`make fuzz`: run each fuzz target for a bounded time and print executions and crashes per target.

    python -m tests.fuzz.run [--seconds 60] [--out .fuzz] [TARGET ...]

Each target runs in its own process (a native crash or hang in FFmpeg, PDFium or MLX ends only that
target). With atheris installed (the `fuzz` extra) it is coverage-guided libFuzzer; without it, a plain
mutation loop over the same seeds. A crash is any exception other than the reader's own error: its
input and traceback are saved under OUT/TARGET/ and the fuzzer keeps going; the process exits non-zero
when any target found one.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import subprocess
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# Per-input time and memory limits: an input over them is a hang or a bomb, reported as a crash.
INPUT_TIMEOUT_S = 20
RSS_LIMIT_MB = 6144


def _record_crash(out: Path, data: bytes, error: BaseException) -> bool:
    """Save a crashing input once per distinct (exception type, innermost frame); True when new."""
    frames = traceback.extract_tb(error.__traceback__)
    where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?"
    signature = hashlib.sha1(f"{type(error).__name__}@{where}".encode()).hexdigest()[:12]
    folder = out / "crashes"
    folder.mkdir(parents=True, exist_ok=True)
    if (folder / f"{signature}.txt").exists():
        return False
    (folder / f"{signature}.bin").write_bytes(data)
    (folder / f"{signature}.txt").write_text("".join(traceback.format_exception(error)))
    return True


def _guarded(target, out: Path, counts: dict):
    def run(data: bytes) -> None:
        counts["executions"] += 1
        try:
            target(data)
        except Exception as error:  # the fuzzer's job: record anything but the reader's own error, go on
            counts["crash_inputs"] += 1
            counts["crashes"] += _record_crash(out, data, error)
    return run


def _mutate(data: bytearray, rng: random.Random) -> bytes:
    """A few byte-level edits of the kinds that break parsers: flips, cuts, repeats, interesting values."""
    for _ in range(rng.randint(1, 8)):
        choice = rng.random()
        if not data:
            data += bytes([rng.randrange(256)])
        position = rng.randrange(len(data))
        if choice < 0.35:
            data[position] ^= 1 << rng.randrange(8)
        elif choice < 0.5:
            data[position] = rng.choice((0, 1, 0x7F, 0x80, 0xFF))
        elif choice < 0.6:
            width = rng.choice((2, 4, 8))
            value = rng.choice((0, 1, 2 ** (8 * width - 1) - 1, 2 ** (8 * width) - 1))
            data[position:position + width] = value.to_bytes(width, "little")
        elif choice < 0.75:
            del data[rng.randrange(position, len(data) + 1):]
        elif choice < 0.85:
            end = min(len(data), position + rng.randint(1, 64))
            data[position:position] = data[position:end] * rng.randint(1, 4)
        else:
            del data[position:position + rng.randint(1, 32)]
    return bytes(data)


def _plain_loop(run, seeds: list[bytes], seconds: float, seed: int) -> None:
    rng = random.Random(seed)
    for data in seeds:
        run(data)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        run(_mutate(bytearray(rng.choice(seeds)), rng))


def worker(name: str, seconds: float, out: Path, engine: str) -> None:
    """The per-target process: fuzz, then write executions and crashes to OUT/NAME/result.json."""
    from tests.fuzz.targets import TARGETS, seed_inputs

    out.mkdir(parents=True, exist_ok=True)
    counts = {"executions": 0, "crashes": 0, "crash_inputs": 0}
    seeds = seed_inputs(name)
    started = time.monotonic()

    def save() -> None:
        result = {**counts, "engine": engine, "seconds": round(time.monotonic() - started, 1)}
        (out / "result.json").write_text(json.dumps(result))

    if engine == "atheris":
        import atheris

        with atheris.instrument_imports():
            import mlx_model.audio_io, mlx_model.image_processor, mlx_model.video  # noqa: F401, E401
            import convert.gguf_reader, gemma4_mac.documents, mlx_model.loader  # noqa: F401, E401
            import convert.hf_source, mlx_model.config, mlx_model.safetensors_header  # noqa: F401, E401
        corpus = out / "corpus"
        corpus.mkdir(exist_ok=True)
        for data in seeds:
            (corpus / hashlib.sha1(data).hexdigest()).write_bytes(data)
        guarded = _guarded(TARGETS[name], out, counts)

        def one_input(data: bytes) -> None:
            guarded(data)
            if counts["executions"] % 50 == 0:
                save()

        save()
        atheris.Setup([sys.argv[0], f"-max_total_time={int(seconds)}", f"-timeout={INPUT_TIMEOUT_S}",
                       f"-rss_limit_mb={RSS_LIMIT_MB}", "-print_final_stats=1",
                       f"-artifact_prefix={out}/", str(corpus)], one_input)
        import atexit

        atexit.register(save)
        atheris.Fuzz()
    else:
        _plain_loop(_guarded(TARGETS[name], out, counts), seeds, seconds, seed=0)
        save()


def _engine() -> str:
    try:
        import atheris  # noqa: F401
    except ImportError:
        return "mutation"
    return "atheris"


def main(argv: list[str] | None = None) -> int:
    from tests.fuzz.targets import TARGETS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("targets", nargs="*", default=[], help=f"any of {', '.join(TARGETS)} (default: all)")
    parser.add_argument("--seconds", type=float, default=float(os.environ.get("FUZZ_SECONDS", 60)))
    parser.add_argument("--out", type=Path, default=REPO / ".fuzz")
    parser.add_argument("--engine", choices=("atheris", "mutation"), default=None)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    engine = args.engine or _engine()
    if args.worker:
        worker(args.worker, args.seconds, args.out / args.worker, engine)
        return 0
    names = args.targets or list(TARGETS)
    unknown = sorted(set(names) - set(TARGETS))
    if unknown:
        parser.error(f"unknown target(s) {', '.join(unknown)}; choose from {', '.join(TARGETS)}")
    print(f"fuzzing {', '.join(names)} for {args.seconds:.0f} s each with {engine}; findings in {args.out}")
    print(f"{'target':<12} {'executions':>11} {'exec/s':>8} {'crashes':>8}  notes")
    failed = False
    for name in names:
        folder = args.out / name
        (folder / "result.json").unlink(missing_ok=True)
        command = [sys.executable, "-m", "tests.fuzz.run", "--worker", name, "--seconds", str(args.seconds),
                   "--out", str(args.out), "--engine", engine]
        log = folder / "fuzz.log"
        folder.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as handle:
            process = subprocess.run(command, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT,
                                     timeout=args.seconds * 3 + 300)
        result = json.loads((folder / "result.json").read_text()) if (folder / "result.json").exists() else {}
        notes = []
        executions = result.get("executions", 0)
        done = re.search(r"Done (\d+) runs", log.read_text(errors="replace"))
        if done:
            executions = max(executions, int(done.group(1)))
        if process.returncode != 0:
            notes.append(f"process ended with {process.returncode} (native crash, hang or memory): see {log}")
            failed = True
        if result.get("crashes"):
            notes.append(f"inputs and tracebacks in {folder / 'crashes'}")
            failed = True
        rate = executions / max(result.get("seconds", args.seconds), 1e-9)
        print(f"{name:<12} {executions:>11} {rate:>8.1f} {result.get('crashes', 0):>8}  {'; '.join(notes)}",
              flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
