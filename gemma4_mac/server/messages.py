"""OpenAI chat messages -> the chat format's messages, with images and audio saved to temporary files.

Images arrive as `image_url` parts (a data URL; a file:// URL or a local path only where the server
allows local files, and then with the file's size checked before it is read); audio as `input_audio`
parts (base64 wav or mp3). Each becomes `{"type": "image"|"audio", "path": ...}`, the form the
generation code reads. Assistant tool-call arguments (a JSON string on the wire) become dicts, and a
tool result that is a JSON object becomes a dict, so the model sees Gemma's own call syntax. OpenAI's
`tool` messages are folded into the calling assistant message as `tool_responses`, the form every
Gemma 4 template reads (the older ones know no `tool` role).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional
from urllib.parse import unquote, urlparse

from .errors import BadRequest
from .limits import read_limited

ROLES = ("system", "developer", "user", "assistant", "tool")
AUDIO_FORMATS = {"wav": ".wav", "mp3": ".mp3", "flac": ".flac", "ogg": ".ogg", "m4a": ".m4a"}
API_MAX_IMAGE_PIXELS = 50_000_000  # decoding costs ~7 bytes a pixel at its peak: ~360 MB here
IMAGE_SUFFIXES = {"PNG": ".png", "JPEG": ".jpg", "GIF": ".gif", "WEBP": ".webp", "BMP": ".bmp",
                  "TIFF": ".tiff"}


class MediaFolder:
    """A request's temporary folder for decoded attachments; `cleanup()` removes it (after generation)."""

    def __init__(self):
        self._path: Optional[Path] = None
        self._count = 0

    def save(self, data: bytes, suffix: str) -> Path:
        if self._path is None:
            self._path = Path(tempfile.mkdtemp(prefix="gemma4-server-"))
        self._count += 1
        path = self._path / f"attachment-{self._count}{suffix}"
        path.write_bytes(data)
        return path

    @property
    def path(self) -> Optional[Path]:
        return self._path

    def cleanup(self) -> None:
        if self._path is not None:
            shutil.rmtree(self._path, ignore_errors=True)
            self._path = None


@dataclass
class Conversation:
    """Messages ready for the chat template, and fingerprints of their attachments in order."""

    messages: list[dict]
    media_digests: list[str] = field(default_factory=list)
    images: int = 0
    audio: int = 0


def _decode_base64(data: str, param: str) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as error:
        raise BadRequest(f"{param}: the data is not valid base64 ({error})", param=param) from error


def _local_path(url: str, param: str, allow_local_files: bool) -> Path:
    if not allow_local_files:
        raise BadRequest(f"{param}: this server does not read files by path (start it with "
                         "--allow-local-files, or turn on local image files in the app's server settings); "
                         "send the image as a data URL instead", param=param, code="local_files_disabled")
    path = Path(unquote(urlparse(url).path) if url.startswith("file:") else url).expanduser()
    if not path.is_file():
        raise BadRequest(f"{param}: no such file {path}", param=param)
    return path


def _image_part(part: dict, param: str, media: MediaFolder, conversation: Conversation,
                allow_local_files: bool) -> dict:
    from mlx_model.image_processor import ImageLoadError, open_image

    image_url = part.get("image_url")
    url = image_url.get("url") if isinstance(image_url, dict) else image_url
    if not isinstance(url, str) or not url:
        raise BadRequest(f"{param}.image_url.url is missing", param=f"{param}.image_url.url")
    if url.startswith(("http://", "https://")):
        raise BadRequest(f"{param}: this server works offline and does not download images; send the image "
                         "as a data URL (data:image/png;base64,...)", param=f"{param}.image_url.url")
    try:
        if url.startswith("data:"):
            header, _, payload = url.partition(",")
            if ";base64" not in header:
                raise BadRequest(f"{param}: only base64 data URLs are supported",
                                 param=f"{param}.image_url.url")
            data = _decode_base64(payload, f"{param}.image_url.url")
            image = open_image(data, name=f"{param} (data URL)", max_pixels=API_MAX_IMAGE_PIXELS)
            path = media.save(data, IMAGE_SUFFIXES.get(image.format or "", ".img"))
        else:
            path = _local_path(url, f"{param}.image_url.url", allow_local_files)
            data = read_limited(path, param=f"{param}.image_url.url")
            open_image(data, name=str(path), max_pixels=API_MAX_IMAGE_PIXELS)
    except ImageLoadError as error:
        raise BadRequest(str(error), param=f"{param}.image_url.url", code="invalid_image") from error
    conversation.media_digests.append(hashlib.sha256(data).hexdigest())
    conversation.images += 1
    return {"type": "image", "path": str(path)}


def _audio_part(part: dict, param: str, media: MediaFolder, conversation: Conversation) -> dict:
    from mlx_model.audio_io import AudioLoadError, load_audio

    audio = part.get("input_audio")
    if not isinstance(audio, dict) or not isinstance(audio.get("data"), str):
        raise BadRequest(f"{param}.input_audio needs 'data' (base64) and 'format'",
                         param=f"{param}.input_audio")
    audio_format = str(audio.get("format", "wav")).lower()
    if audio_format not in AUDIO_FORMATS:
        raise BadRequest(f"{param}.input_audio.format {audio_format!r} is not supported; use one of "
                         f"{', '.join(AUDIO_FORMATS)}", param=f"{param}.input_audio.format")
    data = _decode_base64(audio["data"], f"{param}.input_audio.data")
    try:
        load_audio(data, name=f"{param} ({audio_format})")
    except AudioLoadError as error:
        raise BadRequest(str(error), param=f"{param}.input_audio.data", code="invalid_audio") from error
    path = media.save(data, AUDIO_FORMATS[audio_format])
    conversation.media_digests.append(hashlib.sha256(data).hexdigest())
    conversation.audio += 1
    return {"type": "audio", "path": str(path)}


def _content(content: Any, param: str, role: str, media: MediaFolder, conversation: Conversation,
             allow_local_files: bool) -> Any:
    """A string stays a string; a list of parts is converted part by part."""
    if content is None or isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise BadRequest(f"{param} must be a string or a list of content parts", param=param)
    parts = []
    for index, part in enumerate(content):
        where = f"{param}.{index}"
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise BadRequest(f"{where} must be an object with a 'type'", param=where)
        kind = part["type"]
        if kind in ("text", "input_text", "output_text", "refusal"):
            text = part.get("text", part.get("refusal"))
            if not isinstance(text, str):
                raise BadRequest(f"{where}.text must be a string", param=f"{where}.text")
            parts.append({"type": "text", "text": text})
        elif kind in ("image_url", "input_image") and role == "user":
            parts.append(_image_part(part, where, media, conversation, allow_local_files))
        elif kind == "input_audio" and role == "user":
            parts.append(_audio_part(part, where, media, conversation))
        else:
            raise BadRequest(f"{where}: content parts of type {kind!r} are not supported in {role} messages",
                             param=f"{where}.type")
    return parts


def _text_only(content: Any) -> Any:
    """System and tool content as one string when it is a list of text parts."""
    if isinstance(content, list) and all(p.get("type") == "text" for p in content):
        return "".join(p["text"] for p in content)
    return content


def _tool_calls(calls: Any, param: str) -> list[dict]:
    if not isinstance(calls, list):
        raise BadRequest(f"{param} must be a list", param=param)
    out = []
    for index, call in enumerate(calls):
        where = f"{param}.{index}"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise BadRequest(f"{where}.function.name is missing", param=f"{where}.function.name")
        arguments = function.get("arguments") or "{}"
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError as error:
                raise BadRequest(f"{where}.function.arguments is not valid JSON ({error})",
                                 param=f"{where}.function.arguments") from error
        if not isinstance(arguments, dict):
            raise BadRequest(f"{where}.function.arguments must be a JSON object",
                             param=f"{where}.function.arguments")
        entry = {"type": "function", "function": {"name": function["name"], "arguments": arguments}}
        if call.get("id") is not None:
            entry["id"] = str(call["id"])
        out.append(entry)
    return out


def _tool_result(content: Any) -> Any:
    """A tool result that is a JSON object reaches the model as fields, anything else as text."""
    content = _text_only(content)
    if isinstance(content, str) and content.strip().startswith("{"):
        try:
            parsed = json.loads(content)
        except json.JSONDecodeError:
            return content
        return parsed if isinstance(parsed, dict) else content
    return content


def convert_messages(messages: list[dict], media: MediaFolder, *, allow_local_files: bool) -> Conversation:
    """The request's messages in the chat format's form; BadRequest names the faulty field."""
    conversation = Conversation(messages=[])
    for index, message in enumerate(messages):
        param = f"messages.{index}"
        role = message.get("role")
        if role not in ROLES:
            raise BadRequest(f"{param}.role must be one of {', '.join(ROLES)}", param=f"{param}.role")
        content = _content(message.get("content"), f"{param}.content", role, media, conversation,
                           allow_local_files)
        out: dict[str, Any] = {"role": "system" if role == "developer" else role}
        if role in ("system", "developer"):
            out["content"] = _text_only(content) or ""
        elif role == "tool":
            out["content"] = _tool_result(content)
            if message.get("tool_call_id") is not None:
                out["tool_call_id"] = str(message["tool_call_id"])
            if isinstance(message.get("name"), str):
                out["name"] = message["name"]
        elif role == "assistant":
            out["content"] = content if content is not None else ""
            if message.get("tool_calls"):
                out["tool_calls"] = _tool_calls(message["tool_calls"], f"{param}.tool_calls")
            reasoning = message.get("reasoning_content", message.get("reasoning"))
            if isinstance(reasoning, str) and reasoning:
                out["reasoning_content"] = reasoning
        else:
            if content is None:
                raise BadRequest(f"{param}.content is missing", param=f"{param}.content")
            out["content"] = content
        conversation.messages.append(out)
    conversation.messages = _fold_tool_results(conversation.messages)
    return conversation


def _fold_tool_results(messages: list[dict]) -> list[dict]:
    """Tool messages become `tool_responses` ({"name", "response"}) of the assistant message that called."""
    out: list[dict] = []
    for index, message in enumerate(messages):
        if message["role"] != "tool":
            out.append(message)
            continue
        caller = out[-1] if out and out[-1]["role"] == "assistant" and out[-1].get("tool_calls") else None
        if caller is None:
            raise BadRequest(f"messages.{index}: a 'tool' message must follow an assistant message with "
                             "'tool_calls'", param=f"messages.{index}.role")
        names = {call.get("id"): call["function"]["name"] for call in caller["tool_calls"]}
        name = names.get(message.get("tool_call_id")) or message.get("name")
        if name is None:
            position = len(caller.get("tool_responses", []))
            calls = caller["tool_calls"]
            name = calls[position]["function"]["name"] if position < len(calls) else "unknown"
        caller.setdefault("tool_responses", []).append({"name": name, "response": message.get("content")})
    return out
