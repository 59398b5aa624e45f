"""The app's settings: a plain dataclass saved as JSON in the data folder.

A damaged or hand-edited file never stops the app: unreadable JSON gives the defaults, a bad value
gives that field's default, and each problem comes back as a warning the window shows once.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

from .paths import settings_path

KV_PRECISIONS = (16, 8, 4)
DRAFT_MODES = ("auto", "mtp", "lookup", "off")  # speculative decoding (gemma4_mac/speculative.py)
IMAGE_TOKEN_BUDGETS = (70, 140, 280, 560, 1120)  # the soft-token budgets Gemma 4's image processor supports
THEMES = ("system", "light", "dark")
MAX_TOKENS_LIMIT = 131072
CONTEXT_LIMIT = 262144


@dataclass
class AppSettings:
    """Everything the settings dialog edits. context_size 0 means "auto-fit to this machine's memory"."""

    model_path: str = ""
    system_prompt: str = ""
    thinking: bool = False
    temperature: float = 1.0
    top_p: float = 0.95
    top_k: int = 64
    max_tokens: int = 2048
    context_size: int = 0
    kv_precision: int = 16
    image_token_budget: int = 280
    # faster answers, same text: draft tokens (the model's MTP drafter, prompt lookup) and verify them at
    # once; "auto" drafts only as deep as it measurably pays on this machine
    draft: str = "auto"
    theme: str = "system"
    recent_models: list[str] = field(default_factory=list)
    # MLX model folders the person added from elsewhere, used where they lie (not copied)
    added_models: list[str] = field(default_factory=list)
    log_conversations: bool = False  # conversation text stays out of logs unless the person turns this on
    # the local OpenAI-compatible server (gemma4_mac.server.control); beyond 127.0.0.1 only with an API key
    server_enabled: bool = False
    server_host: str = "127.0.0.1"
    server_port: int = 8080
    server_api_key: str = ""
    server_cors_origins: str = ""  # web origins (scheme://host[:port], space-separated) that may call it
    server_allow_local_files: bool = False  # API requests may name image files on this Mac by path
    server_mcp_tools: bool = False  # API requests may ask for the read-only tools of the MCP servers below
    hotkey: str = ""  # the quick-ask hotkey, e.g. "ctrl+alt+space"; empty: the platform's default
    menu_bar_only: bool = False  # no Dock icon; the app lives in the menu bar
    # tools (docs/tools.md): MCP servers as Claude Desktop and LM Studio write them ({"name": {"command", "args",
    # "env"} or {"url"}}, the value of "mcpServers"), each server's approval mode for tools that write
    # ("always" | "once" | "never"), the tools a new chat starts without ("server/tool"), and the built-in tools
    # switched on (gemma4_mac.builtin_tools: none by default)
    mcp_servers: dict = field(default_factory=dict)
    mcp_approval: dict = field(default_factory=dict)
    tools_off: list[str] = field(default_factory=list)
    builtin_tools: list[str] = field(default_factory=list)
    agent_max_steps: int = 8

    def sampling_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `generate.SamplingSettings` (kept as a dict so this module stays MLX-free)."""
        return {"temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k,
                "max_tokens": self.max_tokens, "draft": self.draft}

    @property
    def kv_bits(self) -> Optional[int]:
        """Bits of the KV cache, None for full precision."""
        return None if self.kv_precision == 16 else self.kv_precision


def _check(name: str, value: Any) -> Optional[str]:
    """Why `value` is not acceptable for field `name`, or None when it is."""
    if name in ("model_path", "system_prompt", "hotkey"):
        return None if isinstance(value, str) else "must be text"
    if name in ("thinking", "menu_bar_only", "log_conversations"):
        return None if isinstance(value, bool) else "must be true or false"
    if name == "temperature":
        return None if _number(value) and 0.0 <= value <= 2.0 else "must be a number from 0 to 2"
    if name == "top_p":
        return None if _number(value) and 0.0 < value <= 1.0 else "must be a number above 0 and at most 1"
    if name == "top_k":
        return None if _integer(value) and 0 <= value <= 1024 else "must be a whole number from 0 to 1024"
    if name == "max_tokens":
        return None if _integer(value) and 1 <= value <= MAX_TOKENS_LIMIT else \
            f"must be a whole number from 1 to {MAX_TOKENS_LIMIT}"
    if name == "context_size":
        return None if _integer(value) and (value == 0 or 512 <= value <= CONTEXT_LIMIT) else \
            f"must be 0 (auto) or a whole number from 512 to {CONTEXT_LIMIT}"
    if name == "kv_precision":
        return None if value in KV_PRECISIONS and _integer(value) else f"must be one of {KV_PRECISIONS}"
    if name == "image_token_budget":
        return None if value in IMAGE_TOKEN_BUDGETS and _integer(value) else f"must be one of {IMAGE_TOKEN_BUDGETS}"
    if name == "draft":
        return None if value in DRAFT_MODES else f"must be one of {', '.join(DRAFT_MODES)}"
    if name == "theme":
        return None if value in THEMES else f"must be one of {', '.join(THEMES)}"
    if name in ("server_enabled", "server_allow_local_files", "server_mcp_tools"):
        return None if isinstance(value, bool) else "must be true or false"
    if name == "server_cors_origins":
        return None if isinstance(value, str) and _origins_ok(value) else \
            "must be web origins such as http://localhost:3000, separated by spaces"
    if name == "server_host":
        return None if isinstance(value, str) and value and " " not in value else "must be an address without spaces"
    if name == "server_api_key":
        return None if isinstance(value, str) and value == value.strip() else "must be text without spaces around it"
    if name == "server_port":
        return None if _integer(value) and 1 <= value <= 65535 else "must be a whole number from 1 to 65535"
    if name == "recent_models":
        return None if isinstance(value, list) and all(isinstance(v, str) for v in value) else "must be a list of text"
    if name in ("mcp_servers", "mcp_approval", "tools_off", "builtin_tools", "agent_max_steps"):
        return _check_tools(name, value)
    if name == "added_models":
        return None if isinstance(value, list) and all(isinstance(v, str) and v.strip() for v in value) and \
            len(set(value)) == len(value) else "must be a list of folder paths, each once"
    return "is not a known setting"


def _check_tools(name: str, value: Any) -> Optional[str]:
    from .mcp_config import APPROVAL_MODES

    if name == "mcp_servers":  # an entry that cannot be used is reported when the tools are set up, and kept
        return None if isinstance(value, dict) and all(isinstance(k, str) for k in value) else \
            "must be an object of MCP servers, as in {\"mcpServers\": {...}}"
    if name == "mcp_approval":
        return None if isinstance(value, dict) and all(isinstance(k, str) and v in APPROVAL_MODES
                                                       for k, v in value.items()) else \
            f"must map server names to one of {', '.join(APPROVAL_MODES)}"
    if name == "tools_off":
        return None if isinstance(value, list) and all(isinstance(v, str) for v in value) else \
            "must be a list of tools as \"server/tool\""
    if name == "builtin_tools":
        from .builtin_tools import BUILTIN_NAMES

        return None if isinstance(value, list) and all(v in BUILTIN_NAMES for v in value) else \
            f"must be a list of {', '.join(BUILTIN_NAMES)}"
    return None if _integer(value) and 1 <= value <= 50 else "must be a whole number from 1 to 50"


def _origins_ok(text: str) -> bool:
    from urllib.parse import urlsplit

    for origin in text.replace(",", " ").split():
        parts = urlsplit(origin.rstrip("/"))
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.path or parts.query:
            return False
    return True


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def validate(settings: AppSettings) -> list[str]:
    """Problems with the values of `settings` (empty when all are acceptable)."""
    return [f"{f.name} {problem}" for f in fields(AppSettings)
            if (problem := _check(f.name, getattr(settings, f.name))) is not None]


def from_dict(data: Any, source: str = "settings") -> tuple[AppSettings, list[str]]:
    """Settings from a decoded JSON object; bad or unknown keys are dropped with a warning each."""
    defaults = AppSettings()
    if not isinstance(data, dict):
        return defaults, [f"{source} does not hold a JSON object; using the default settings."]
    warnings = []
    values = {}
    known = {f.name for f in fields(AppSettings)}
    for key, value in data.items():
        if key not in known:
            warnings.append(f"{source}: unknown setting {key!r} ignored.")
            continue
        if key == "temperature" or key == "top_p":
            value = float(value) if _integer(value) else value
        problem = _check(key, value)
        if problem:
            warnings.append(f"{source}: {key} {problem}; using the default ({getattr(defaults, key)!r}).")
            continue
        values[key] = value
    return AppSettings(**values), warnings


def load_settings(path: Optional[Path] = None) -> tuple[AppSettings, list[str]]:
    """Read the settings file; a missing file gives defaults silently, a broken one defaults and a warning."""
    path = Path(path) if path is not None else settings_path()
    if not path.exists():
        return AppSettings(), []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        return AppSettings(), [f"{path} could not be read ({error}); using the default settings. "
                               "Saving the settings will replace the file."]
    return from_dict(data, str(path))


def save_settings(settings: AppSettings, path: Optional[Path] = None) -> Path:
    """Write the settings atomically (a crash mid-write leaves the old file intact)."""
    problems = validate(settings)
    if problems:
        raise ValueError("Settings not saved: " + "; ".join(problems))
    path = Path(path) if path is not None else settings_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=".settings-", suffix=".json", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            json.dump(asdict(settings), out, indent=2, ensure_ascii=False)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path
