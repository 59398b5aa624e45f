"""Small valid files for every reader, built at run time (nothing downloaded): fuzz seeds and test inputs.

Each builder returns bytes; the hostile-input tests and the fuzzers cut, flip and stretch them.
"""

from __future__ import annotations

import hashlib
import io
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np

# ---------------------------------------------------------------------------------------------- images


def png(width: int = 24, height: int = 16, mode: str = "RGB") -> bytes:
    """A real PNG of a colour gradient."""
    from PIL import Image

    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x * 255 // max(width, 1), y * 255 // max(height, 1), (x + y) % 256], -1).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB").convert(mode)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def jpeg(width: int = 24, height: int = 16) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.open(io.BytesIO(png(width, height))).save(out, format="JPEG", quality=80)
    return out.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_claiming(width: int, height: int, body: bytes = b"\0" * 16) -> bytes:
    """A PNG whose header claims width x height over a tiny compressed body (a decompression bomb's shape)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(body))
            + _png_chunk(b"IEND", b""))


def png_text_bomb(megabytes: int = 64) -> bytes:
    """A valid 8x8 PNG with a compressed zTXt chunk that inflates to `megabytes` MB."""
    base = png(8, 8)
    payload = b"k\0\0" + zlib.compress(b"A" * (megabytes << 20), 9)
    end = base.rindex(b"IEND") - 4
    return base[:end] + _png_chunk(b"zTXt", payload) + base[end:]


def png_pixel_bomb(side: int = 9000) -> bytes:
    """A real side x side black PNG (a few kB on disk, side*side*3 bytes decoded)."""
    row = b"\0" + b"\0" * (3 * side)
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    data = zlib.compress(row * side, 9)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", data) + _png_chunk(b"IEND", b"")


# ----------------------------------------------------------------------------------------------- audio


def wav(seconds: float = 0.25, rate: int = 16_000, channels: int = 1, sample_width: int = 2) -> bytes:
    """A PCM WAV of a 440 Hz tone written with the standard library."""
    import wave

    frames = int(seconds * rate)
    t = np.arange(frames) / rate
    tone = 0.4 * np.sin(2 * np.pi * 440.0 * t)
    samples = np.repeat(tone[:, None], channels, axis=1)
    if sample_width == 1:
        data = np.round(samples * 127 + 128).astype(np.uint8).tobytes()
    else:
        scale = {2: 32767, 4: 2147483647}[sample_width]
        data = np.round(samples * scale).astype({2: "<i2", 4: "<i4"}[sample_width]).tobytes()
    out = io.BytesIO()
    with wave.open(out, "wb") as writer:
        writer.setnchannels(channels)
        writer.setsampwidth(sample_width)
        writer.setframerate(rate)
        writer.writeframes(data)
    return out.getvalue()


def silent_wav_header(seconds: float, rate: int = 16_000) -> bytes:
    """A WAV header (streaming style, size fields 0xFFFFFFFF) declaring nothing; a few samples follow."""
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16)
    data_bytes = int(seconds * rate) * 2
    return (b"RIFF" + struct.pack("<I", 0xFFFFFFFF) + b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt
            + b"data" + struct.pack("<I", min(data_bytes, 0xFFFFFFFF)) + b"\0" * 3200)


def encoded_audio(kind: str = "flac", seconds: float = 0.5, rate: int = 16_000, channels: int = 1) -> bytes:
    """Audio encoded with FFmpeg (flac, mp3 or ogg/opus) through PyAV."""
    import av

    container_format, codec = {"flac": ("flac", "flac"), "mp3": ("mp3", "libmp3lame"),
                               "ogg": ("ogg", "libopus")}[kind]
    rate = 48_000 if codec == "libopus" else rate  # Opus only runs at 48 kHz
    layout = "mono" if channels == 1 else "stereo"
    out = io.BytesIO()
    with av.open(out, "w", format=container_format) as container:
        stream = container.add_stream(codec, rate=rate, layout=layout)
        fmt = stream.codec_context.format.name
        t = np.arange(int(seconds * rate)) / rate
        samples = np.repeat((0.3 * np.sin(2 * np.pi * 440 * t))[None], channels, axis=0).astype(np.float32)
        if fmt.startswith("s16"):
            samples = np.round(samples * 32767).astype(np.int16)
        elif fmt.startswith("s32"):
            samples = np.round(samples * 2147483647.0).astype(np.int32)
        planes = samples if fmt.endswith("p") else samples.T.reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(planes), format=fmt, layout=layout)
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return out.getvalue()


# ----------------------------------------------------------------------------------------------- video


def mp4(frames: int = 6, size: tuple[int, int] = (32, 32), fps: int = 6, codec: str = "mpeg4",
        container_format: str = "mp4") -> bytes:
    """A short clip encoded with FFmpeg through PyAV (returned as bytes via a temporary file)."""
    import av

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"clip.{container_format}"
        with av.open(str(path), "w", format=container_format) as container:
            stream = container.add_stream(codec, rate=fps)
            stream.width, stream.height = size
            stream.pix_fmt = "yuv420p"
            for i in range(frames):
                image = np.full((size[1], size[0], 3), (i * 40) % 256, dtype=np.uint8)
                for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        return path.read_bytes()


# ------------------------------------------------------------------------------------------------- PDF


def pdf(pages: tuple[str, ...] = ("Hello from page one",)) -> bytes:
    """A PDF with one line of Helvetica text per page (tests/pdf_fixtures.write_pdf)."""
    from tests.pdf_fixtures import write_pdf

    with tempfile.TemporaryDirectory() as folder:
        return write_pdf(Path(folder) / "doc.pdf", list(pages)).read_bytes()


_PDF_PAD = bytes.fromhex("28BF4E5E4E758A4164004E56FFFA01082E2E00B6D0683E802F0CA9FE6453697A")


def _rc4(key: bytes, data: bytes) -> bytes:
    state = list(range(256))
    j = 0
    for i in range(256):
        j = (j + state[i] + key[i % len(key)]) % 256
        state[i], state[j] = state[j], state[i]
    out, i, j = bytearray(), 0, 0
    for byte in data:
        i = (i + 1) % 256
        j = (j + state[i]) % 256
        state[i], state[j] = state[j], state[i]
        out.append(byte ^ state[(state[i] + state[j]) % 256])
    return bytes(out)


def encrypted_pdf(text: str = "Top secret figures", user_password: bytes = b"secret",
                  owner_password: bytes = b"owner") -> bytes:
    """A one-page PDF under the standard security handler (RC4 40-bit, revision 2) with a user password.

    Built by hand following PDF 1.7 section 7.6.3 (algorithms 2, 3 and 4), so PDFium asks for the password.
    """
    file_id = hashlib.md5(b"gemma4-mac hostile input").digest()
    permissions = -4
    owner_key = hashlib.md5((owner_password + _PDF_PAD)[:32]).digest()[:5]
    o_value = _rc4(owner_key, (user_password + _PDF_PAD)[:32])
    key = hashlib.md5((user_password + _PDF_PAD)[:32] + o_value + struct.pack("<i", permissions)
                      + file_id).digest()[:5]
    u_value = _rc4(key, _PDF_PAD)

    def encrypt(number: int, data: bytes) -> bytes:
        object_key = hashlib.md5(key + number.to_bytes(3, "little") + b"\0\0").digest()[:10]
        return _rc4(object_key, data)

    content = encrypt(4, f"BT /F1 18 Tf 72 720 Td ({text}) Tj ET".encode())
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        b"<< /Filter /Standard /V 1 /R 2 /O <" + o_value.hex().encode() + b"> /U <" + u_value.hex().encode()
        + b"> /P %d >>" % permissions,
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{o:010d} 00000 n \n".encode() for o in offsets)
    id_hex = file_id.hex().encode()
    out += (b"trailer\n<< /Size %d /Root 1 0 R /Encrypt 6 0 R /ID [<%s> <%s>] >>\nstartxref\n%d\n%%%%EOF\n"
            % (len(objects) + 1, id_hex, id_hex, xref))
    return bytes(out)


# ---------------------------------------------------------------------------------------- model files


def gguf() -> bytes:
    """A tiny GGUF (v3) with string, number and array metadata and an F32 and a Q8_0 tensor (gguf-py's writer)."""
    import gguf as gguf_py

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "tiny.gguf"
        writer = gguf_py.GGUFWriter(str(path), "gemma3")
        writer.add_string("general.name", "tiny")
        writer.add_uint32("gemma3.context_length", 128)
        writer.add_array("tokenizer.ggml.tokens", ["<pad>", "<eos>", "a", "b"])
        writer.add_array("tokenizer.ggml.scores", [0.0, 0.0, -1.0, -2.0])
        writer.add_tensor("token_embd.weight", np.arange(4 * 32, dtype=np.float32).reshape(4, 32))
        q8 = gguf_py.quants.quantize(np.linspace(-1, 1, 2 * 32, dtype=np.float32).reshape(2, 32),
                                     gguf_py.GGMLQuantizationType.Q8_0)
        writer.add_tensor("blk.0.attn_q.weight", q8, raw_dtype=gguf_py.GGMLQuantizationType.Q8_0)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        return path.read_bytes()


def safetensors() -> bytes:
    """A small safetensors file with float32, float16 and int32 tensors."""
    from safetensors.numpy import save

    return save({"a.weight": np.arange(12, dtype=np.float32).reshape(3, 4),
                 "b.bias": np.ones(5, dtype=np.float16), "c.index": np.arange(3, dtype=np.int32)},
                metadata={"format": "mlx"})


def config_json(multimodal: bool = False) -> bytes:
    """A tiny Gemma 4 config.json: text only (flat), or nested with vision and audio towers."""
    import json

    text = {"model_type": "gemma4_text", "vocab_size": 512, "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 32,
            "global_head_dim": 64, "sliding_window": 16,
            "layer_types": ["sliding_attention", "full_attention"],
            "hidden_size_per_layer_input": 0, "rope_parameters": {
                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                "full_attention": {"rope_type": "proportional", "partial_rotary_factor": 0.25,
                                   "rope_theta": 1000000.0}},
            "eos_token_id": [1, 106]}
    if not multimodal:
        return json.dumps(text).encode()
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
              "num_key_value_heads": 2, "head_dim": 16, "position_embedding_size": 64}
    audio = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
             "subsampling_conv_channels": [128, 8], "output_proj_dims": 32}
    return json.dumps({"model_type": "gemma4", "text_config": text, "vision_config": vision,
                       "audio_config": audio, "quantization": {"group_size": 64, "bits": 4}}).encode()
