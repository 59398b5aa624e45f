"""One model across several Macs: rank 0 runs the app's code as usual, the other ranks follow its model calls.

The model is split by heads (mlx_model/sharding.py) or by layers (mlx_model/pipeline.py), so every forward
pass must run on every rank at once, in the same order, with the same caches. Rank 0 wraps its model in
`LeaderModel`: each forward call, each new cache and each cache operation (reserve, trim, checkpoint,
restore) is first sent to the followers, which repeat it on their own part (`follow`). Messages go over
MLX's collectives (an `all_sum` where only rank 0 adds anything), so the same ring that carries the
activations carries the commands. Split by layers, the followers get no embeddings, only the prompt's ids:
they take their input from the rank before them.

Followers are started through `mlx.launch` (hosts.json: MLX's hostfile, this Mac first). Rank 0 itself is not
under the launcher, so a follower that dies ends the request with `PeerLostError` instead of the launcher
killing the server; the model then refuses further requests with the same clear error. A follower that stays
connected but stops answering is ended the same way by a `RingWatchdog` (gemma4_mac/ringwatch.py) once a
model call has waited longer than its timeout; followers watch rank 0 likewise while they run its calls.
"""

from __future__ import annotations

import itertools
import json
import threading
import weakref
from contextlib import nullcontext
from typing import Any, ContextManager, Optional

import mlx.core as mx
import numpy as np

from .prefill import GenerationError
from .ringwatch import LOAD_TIMEOUT, RingWatchdog

STOP = "stop"
MEDIA_ARGUMENTS = ("pixel_values", "image_position_ids", "pixel_values_videos", "video_position_ids",
                   "input_features", "input_features_mask")
FIRST_BLOCK = 2048  # bytes of a message's first collective: its whole header, unless a long one follows
INLINE_LIMIT = 64  # integer arrays up to this many elements travel inside the header
PLE_IDS = "__ple_ids__"  # the text ids from which each rank looks up its own columns of PLE's token half


class PeerLostError(GenerationError):
    """A Mac of the group stopped answering (it quit, crashed or its link dropped)."""


class _TokenHalf:
    """PLE's token half of a prompt with attachments, as rank 0 computed it for its own columns, with the text
    ids each follower needs to look up its columns (the per-layer table is split across the ranks)."""

    def __init__(self, values: mx.array, text_ids: mx.array):
        self.values, self.text_ids = values, text_ids


class Channel:
    """Rank 0 -> every rank: a JSON header plus named arrays, carried by `all_sum` (MLX has no broadcast)."""

    def __init__(self, group: mx.distributed.Group):
        self.group = group
        self.leader = group.rank() == 0

    def barrier(self) -> None:
        """Wait until every rank got here (each has loaded its shard)."""
        mx.eval(mx.distributed.all_sum(mx.ones((1,)), group=self.group))

    def _share(self, value: mx.array) -> mx.array:
        out = mx.distributed.all_sum(value if self.leader else mx.zeros_like(value), group=self.group)
        mx.eval(out)
        return out

    def send(self, header: dict, arrays: dict[str, mx.array]) -> None:
        """(rank 0) Send a message; followers get it from `wait` and `read`. A decode step's message (its
        token ids inline) is one collective: each costs a round trip, which slow links make dear."""
        inline = {name: [str(a.dtype).split(".")[-1], list(a.shape), a.reshape(-1).tolist()]
                  for name, a in arrays.items() if _inlined(a)}
        header = {**header, "inline": inline,
                  "arrays": [[name, str(a.dtype).split(".")[-1], list(a.shape)]
                             for name, a in arrays.items() if name not in inline]}
        raw = json.dumps(header).encode("utf-8")
        first = np.zeros(FIRST_BLOCK, dtype=np.uint8)
        first[:4] = np.frombuffer(len(raw).to_bytes(4, "little"), dtype=np.uint8)
        if len(raw) <= FIRST_BLOCK - 4:
            first[4:4 + len(raw)] = np.frombuffer(raw, dtype=np.uint8)
        self._share(mx.array(first))
        if len(raw) > FIRST_BLOCK - 4:
            self._share(mx.array(np.frombuffer(raw, dtype=np.uint8)))
        for name, array in arrays.items():
            if name not in inline:
                self._share(array.astype(mx.uint8) if array.dtype == mx.bool_ else array)

    def wait(self) -> np.ndarray:
        """(followers) Wait for rank 0's next message (as long as it takes: the server may be idle for hours);
        its first block, for `read`."""
        return np.array(self._share(mx.zeros((FIRST_BLOCK,), dtype=mx.uint8)))

    def read(self, first: np.ndarray) -> tuple[dict, dict[str, mx.array]]:
        """(followers) The message whose first block `wait` returned."""
        size = int.from_bytes(first[:4].tobytes(), "little")
        if size <= FIRST_BLOCK - 4:
            raw = first[4:4 + size].tobytes()
        else:
            raw = bytes(self._share(mx.zeros((size,), dtype=mx.uint8)).tolist())
        header = json.loads(raw.decode("utf-8"))
        arrays = {name: mx.array(values, dtype=mx.bool_ if dtype == "bool" else getattr(mx, dtype)).reshape(shape)
                  for name, (dtype, shape, values) in header.pop("inline").items()}
        for name, dtype, shape in header.pop("arrays"):
            wire = mx.uint8 if dtype == "bool" else getattr(mx, dtype)
            value = self._share(mx.zeros(shape, dtype=wire))
            arrays[name] = value.astype(mx.bool_) if dtype == "bool" else value
        return header, arrays


def _inlined(array: mx.array) -> bool:
    """Small integer arrays (a decode step's token ids) travel inside the header."""
    return array.size <= INLINE_LIMIT and (array.dtype == mx.bool_ or mx.issubdtype(array.dtype, mx.integer))


def _split_arguments(kwargs: dict) -> tuple[dict, dict[str, mx.array]]:
    """Keyword arguments as JSON values plus arrays (also inside one level of dicts, e.g. mask overrides)."""
    plain, arrays = {}, {}
    for key, value in kwargs.items():
        if isinstance(value, mx.array):
            arrays[key] = value
        elif isinstance(value, dict):
            plain[key] = {"__dict__": [k for k in value]}
            for inner, item in value.items():
                if isinstance(item, mx.array):
                    arrays[f"{key}/{inner}"] = item
                else:
                    plain[key].setdefault("__plain__", {})[inner] = item
        else:
            plain[key] = value
    return plain, arrays


def _join_arguments(plain: dict, arrays: dict[str, mx.array]) -> dict:
    kwargs = {}
    for key, value in plain.items():
        if isinstance(value, dict) and "__dict__" in value:
            kwargs[key] = {inner: arrays.get(f"{key}/{inner}", value.get("__plain__", {}).get(inner))
                           for inner in value["__dict__"]}
        else:
            kwargs[key] = value
    kwargs.update({k: v for k, v in arrays.items() if "/" not in k})
    return kwargs


class _Handle:
    """A cache checkpoint on rank 0, with the id under which every follower keeps its own."""

    def __init__(self, handle_id: int, value: Any):
        self.id, self.value = handle_id, value


_MIRROR_CLASSES: dict[type, type] = {}


def _mirror_class(base: type) -> type:
    """`base` with its state-changing methods sent to the followers first (KVCache, SlidingKVCache)."""
    if base in _MIRROR_CLASSES:
        return _MIRROR_CLASSES[base]
    methods = {}
    if hasattr(base, "reserve"):
        def reserve(self, n_tokens):
            self._leader.cache_op(self, "reserve", n_tokens)
            return base.reserve(self, n_tokens)
        methods["reserve"] = reserve

    def trim(self, n):
        self._leader.cache_op(self, "trim", n)
        return base.trim(self, n)

    def checkpoint(self):
        handle = self._leader.new_handle(base.checkpoint(self))
        self._leader.cache_op(self, "checkpoint", handle.id)
        return handle

    def restore(self, handle):
        self._leader.cache_op(self, "restore", handle.id)
        return base.restore(self, handle.value)

    methods.update(trim=trim, checkpoint=checkpoint, restore=restore)
    _MIRROR_CLASSES[base] = type(f"Mirrored{base.__name__}", (base,), methods)
    return _MIRROR_CLASSES[base]


class _LeaderLanguageModel:
    """`model.language_model` on rank 0: calls are mirrored, everything else is the real decoder's."""

    def __init__(self, leader: "LeaderModel"):
        self._leader = leader

    def __getattr__(self, name):
        return getattr(self._leader._model.language_model, name)

    def __call__(self, inputs=None, cache=None, **kwargs):
        return self._leader._run("language_model", inputs, cache, kwargs)


class LeaderModel:
    """Rank 0's model: the sharded model; the followers repeat its every forward pass and cache change."""

    # the server's batch caches (mlx-lm's) are not mirrored to the followers: one request at a time, on ours
    supports_batching = False

    def __init__(self, model, group: mx.distributed.Group, watchdog: Optional[RingWatchdog] = None):
        """`watchdog` bounds each wait for the other Macs (none: a silent Mac blocks rank 0 forever)."""
        self._model = model
        self._channel = Channel(group)
        self._watchdog = watchdog
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._forgotten: list = []
        self.lost: Optional[str] = None
        self.ranks = group.size()
        try:
            with self._watch(LOAD_TIMEOUT):
                self._channel.barrier()  # ready once every Mac holds its shard
        except RuntimeError as error:
            raise self._peer_lost(error) from error

    def __getattr__(self, name):
        return getattr(self._model, name)

    @property
    def language_model(self):
        return _LeaderLanguageModel(self)

    @property
    def layers_split(self) -> bool:
        """Split by layers (mlx_model/pipeline.py), else by heads."""
        return self._model.language_model.stage is not None

    def _watch(self, limit: Optional[float] = None) -> ContextManager:
        return self._watchdog.watch(limit) if self._watchdog else nullcontext()

    def _send(self, header: dict, arrays: Optional[dict] = None) -> None:
        if self.lost:
            raise PeerLostError(self.lost)
        forgotten, self._forgotten = self._forgotten, []
        try:
            with self._lock, self._watch():
                self._channel.send({**header, "forget": forgotten}, arrays or {})
        except RuntimeError as error:  # MLX's ring: "connection to a peer was lost"
            raise self._peer_lost(error) from error

    def _peer_lost(self, error: BaseException) -> PeerLostError:
        restart = ("the model is split across the Macs, so it cannot answer until `serve` (or `ask`) is "
                   "started again on all of them.")
        if self._watchdog is not None and self._watchdog.silent_for is not None:
            self.lost = (f"{self._watchdog.describe()} (it is still connected: asleep, stopped or its link "
                         f"is down); {restart} If that Mac is only slow, raise --peer-timeout "
                         f"(now {self._watchdog.timeout:.0f} s).")
        else:
            self.lost = f"a Mac of the {self.ranks}-Mac group stopped answering ({error}); {restart}"
        return PeerLostError(self.lost)

    def _run(self, target: str, inputs, cache, kwargs):
        token_half = kwargs.get("per_layer_inputs")
        text_ids = token_half.text_ids if isinstance(token_half, _TokenHalf) else None
        if text_ids is not None:
            kwargs = {**kwargs, "per_layer_inputs": token_half.values}
        shared = {k: v for k, v in kwargs.items() if not (k == "per_layer_inputs" and text_ids is not None)}
        embeds = kwargs.get("input_embeddings")
        if self.layers_split and embeds is not None:
            # split by layers, the other Macs take hidden states from the Mac before them: they need the
            # prompt's shape and, for PLE's token half, its text ids; not the embeddings themselves
            shared = {k: v for k, v in shared.items() if k not in ("input_embeddings", "per_layer_inputs")}
            inputs_shared = text_ids if text_ids is not None else mx.zeros(embeds.shape[:2], dtype=mx.int32)
            text_ids = None
        else:
            inputs_shared = inputs
        plain, arrays = _split_arguments(shared)
        if text_ids is not None:
            arrays[PLE_IDS] = text_ids
        if inputs_shared is not None:
            arrays["__inputs__"] = inputs_shared
        ids = [layer._mirror_id for layer in cache] if cache else None
        self._send({"op": "forward", "target": target, "cache": ids, "kwargs": plain}, arrays)
        module = self._model.language_model if target == "language_model" else self._model
        try:
            with self._watch():  # split by layers, the call itself waits for the other Macs
                out = module(inputs, cache=cache, **kwargs)
                mx.eval(out)  # here, so that a lost peer is reported as such and not deep inside generation
        except RuntimeError as error:
            raise self._peer_lost(error) from error
        return out

    def __call__(self, inputs=None, cache=None, **kwargs):
        media = {k: kwargs.pop(k, None) for k in MEDIA_ARGUMENTS}
        if any(media[k] is not None for k in ("pixel_values", "pixel_values_videos", "input_features")):
            # the towers are replicated: rank 0 runs them alone and the ranks share the merged embeddings
            kwargs["input_embeddings"], kwargs["per_layer_inputs"] = self.embed_multimodal(
                inputs, **self._model.media_features(**media))
        return self._run("model", inputs, cache, kwargs)

    def embed_multimodal(self, input_ids, **features):
        """The model's merged embeddings (the token table is replicated); PLE's token half is marked so that
        each follower looks up its own columns of it from the same text ids."""
        embeds, per_layer = self._model.embed_multimodal(input_ids, **features)
        if per_layer is not None:
            per_layer = _TokenHalf(per_layer, self._model.text_ids(input_ids))
        return embeds, per_layer

    def make_cache(self, kv_bits: Optional[int] = None, kv_group_size: int = 64) -> list:
        list_id = next(self._ids)
        self._send({"op": "make_cache", "id": list_id, "kv_bits": kv_bits, "kv_group_size": kv_group_size})
        caches = self._model.make_cache(kv_bits=kv_bits, kv_group_size=kv_group_size)
        for index, layer in enumerate(caches):
            layer.__class__ = _mirror_class(type(layer))
            layer._leader, layer._mirror_id = self, [list_id, index]
        if caches:
            weakref.finalize(caches[0], self._forgotten.append, ["cache", list_id])
        return caches

    def new_handle(self, value) -> _Handle:
        handle = _Handle(next(self._ids), value)
        weakref.finalize(handle, self._forgotten.append, ["handle", handle.id])
        return handle

    def cache_op(self, layer, op: str, argument) -> None:
        self._send({"op": "cache", "cache": layer._mirror_id, "call": op, "argument": argument})

    def close(self) -> None:
        """Let the followers exit (they would also end once this process's connections close)."""
        if not self.lost:
            try:
                self._send({"op": STOP})
            except PeerLostError:
                pass


def follow(model, group: mx.distributed.Group, watchdog: Optional[RingWatchdog] = None) -> None:
    """(ranks 1..N-1) Repeat rank 0's model calls on this rank's shard until it says stop or goes away
    (RuntimeError). With a `watchdog`, a call of rank 0's that stalls past its timeout ends it too."""
    channel = Channel(group)
    watch = watchdog.watch if watchdog else nullcontext
    channel.barrier()  # rank 0 may still be loading its shard
    caches: dict[int, list] = {}
    handles: dict[int, Any] = {}
    while True:
        first = channel.wait()
        with watch():  # from the first word of a message until its call is done, rank 0 must keep up
            if not _obey(model, channel.read(first), caches, handles):
                return


def _obey(model, message: tuple[dict, dict], caches: dict[int, list], handles: dict[int, Any]) -> bool:
    """Carry out one message of rank 0's on this rank's shard; False when it says stop."""
    header, arrays = message
    for kind, key in header.get("forget", []):
        (caches if kind == "cache" else handles).pop(key, None)
    op = header["op"]
    if op == STOP:
        return False
    if op == "make_cache":
        caches[header["id"]] = model.make_cache(kv_bits=header["kv_bits"],
                                                kv_group_size=header["kv_group_size"])
    elif op == "cache":
        list_id, index = header["cache"]
        layer = caches[list_id][index]
        if header["call"] == "checkpoint":
            handles[header["argument"]] = layer.checkpoint()
        elif header["call"] == "restore":
            layer.restore(handles[header["argument"]])
        else:
            getattr(layer, header["call"])(header["argument"])
    elif op == "forward":
        cache = [caches[list_id][index] for list_id, index in header["cache"] or []] or None
        inputs = arrays.pop("__inputs__", None)
        text_ids = arrays.pop(PLE_IDS, None)
        kwargs = _join_arguments(header["kwargs"], arrays)
        if text_ids is not None:
            kwargs["per_layer_inputs"] = model.language_model.per_layer_token_inputs(text_ids)
        module = model.language_model if header["target"] == "language_model" else model
        mx.eval(module(inputs, cache=cache, **kwargs))
    return True
