"""The Info.plist of `Gemma 4.app`: bundle id, version, minimum macOS, microphone text, document types.

Used by packaging/gemma4.spec (PyInstaller's BUNDLE merges it over its defaults) and runnable on its
own: `python packaging/info_plist.py [--menu-bar-only] [-o Info.plist]`.
"""

from __future__ import annotations

import argparse
import plistlib
import sys
import tomllib
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parent.parent
APP_NAME = "Gemma 4"
BUNDLE_ID = "com.gemma4mac.app"
MINIMUM_MACOS = "14.0"  # MLX needs macOS 14 on Apple silicon
ICON_FILE = "AppIcon.icns"
MICROPHONE_TEXT = ("Gemma records only while you hold the record button, so the model can transcribe or answer "
                   "your voice note. The audio stays on this Mac.")


def _document_type(name: str, types: list[str]) -> dict[str, Any]:
    # "Alternate": Gemma offers itself in Open With and accepts drops, without taking over these files
    return {"CFBundleTypeName": name, "CFBundleTypeRole": "Viewer", "LSHandlerRank": "Alternate",
            "LSItemContentTypes": types}


DOCUMENT_TYPES = [
    _document_type("Image", ["public.image"]),
    _document_type("PDF document", ["com.adobe.pdf"]),
    _document_type("Audio", ["public.audio"]),
    _document_type("Video", ["public.movie"]),
    _document_type("Text and code", ["public.plain-text", "public.source-code", "net.daringfireball.markdown"]),
    # models dropped on the Dock icon: a model folder (MLX or Hugging Face checkpoint) or a GGUF file
    _document_type("Model folder", ["public.folder"]),
    _document_type("GGUF model", ["com.ggml.gguf"]),
]
GGUF_TYPE = "com.ggml.gguf"
# macOS knows no type for .gguf: declare it (imported: llama.cpp's format, not ours) so Finder offers the app
IMPORTED_TYPES = [{"UTTypeIdentifier": GGUF_TYPE, "UTTypeDescription": "GGUF model",
                   "UTTypeConformsTo": ["public.data"],
                   "UTTypeTagSpecification": {"public.filename-extension": ["gguf"]}}]


class PlistError(ValueError):
    """The project metadata the plist needs is missing or wrong."""


def project_version(pyproject: Path = ROOT / "pyproject.toml") -> str:
    """The version in pyproject.toml ([project] version)."""
    try:
        data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise PlistError(f"{pyproject} cannot be read ({error}); the bundle version comes from it.") from error
    version = data.get("project", {}).get("version")
    if not isinstance(version, str) or not version:
        raise PlistError(f"{pyproject} has no [project] version; add one, e.g. version = \"0.1.0\".")
    return version


def build_info_plist(version: Optional[str] = None, *, menu_bar_only: bool = False,
                     bundle_id: str = BUNDLE_ID) -> dict[str, Any]:
    """The Info.plist keys as a dict (plistlib writes it). `menu_bar_only` sets LSUIElement (no Dock icon)."""
    version = version or project_version()
    return {
        "CFBundleName": APP_NAME,
        "CFBundleDisplayName": APP_NAME,
        "CFBundleIdentifier": bundle_id,
        "CFBundleShortVersionString": version,
        "CFBundleVersion": version,
        "CFBundlePackageType": "APPL",
        "CFBundleIconFile": ICON_FILE,
        "CFBundleDevelopmentRegion": "en",
        "LSMinimumSystemVersion": MINIMUM_MACOS,
        "LSApplicationCategoryType": "public.app-category.productivity",
        "LSUIElement": bool(menu_bar_only),
        "NSMicrophoneUsageDescription": MICROPHONE_TEXT,
        "NSHighResolutionCapable": True,
        "NSRequiresAquaSystemAppearance": False,
        "NSHumanReadableCopyright": "Runs Google's Gemma models locally. Apache-2.0.",
        "CFBundleDocumentTypes": [dict(d) for d in DOCUMENT_TYPES],
        "UTImportedTypeDeclarations": [dict(t) for t in IMPORTED_TYPES],
    }


def write_info_plist(path: Path, **kwargs: Any) -> Path:
    """Write the XML Info.plist to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as out:
        plistlib.dump(build_info_plist(**kwargs), out, fmt=plistlib.FMT_XML, sort_keys=True)
    return path


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Write the Info.plist of Gemma 4.app.")
    parser.add_argument("-o", "--output", type=Path, default=ROOT / "build" / "Info.plist")
    parser.add_argument("--menu-bar-only", action="store_true", help="no Dock icon (LSUIElement)")
    parser.add_argument("--version", help="bundle version (default: pyproject.toml's)")
    args = parser.parse_args(argv)
    try:
        path = write_info_plist(args.output, version=args.version, menu_bar_only=args.menu_bar_only)
    except PlistError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
