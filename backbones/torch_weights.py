"""Read a PyTorch state dict saved by `torch.save` in the legacy (non-zip) format, without torch.

Such a file is five pickles back to back followed by raw storage bytes:
magic number, protocol version, system info (byte order), the state dict itself (its tensors refer
to storages by persistent id), and the keys of those storages in the order their bytes follow.
Each storage is an int64 element count followed by the elements.

Unpickling runs code chosen by the file, so only the few globals a state dict needs are allowed;
a crafted file asking for anything else (os.system, eval, ...) is refused before it runs.
"""
import collections
import math
import os
import pickle

import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class CheckpointError(Exception):
    """The file is not a legacy torch state dict, or it asks for more than tensors and dicts."""


class _StorageType:
    """Stands in for a torch storage class (torch.FloatStorage, ...): only its dtype matters."""

    def __init__(self, name):
        self.dtype = np.dtype(_STORAGE_DTYPES[name])


class _Storage:
    """A flat buffer whose bytes come after the pickles; filled in once they are read."""

    def __init__(self, dtype, numel):
        self.dtype, self.numel, self.data = dtype, numel, None


class _PendingTensor:
    """A strided view of a storage, resolved to a numpy array once the storage bytes are read."""

    def __init__(self, storage, offset, shape, strides):
        self.storage, self.offset, self.shape, self.strides = storage, offset, tuple(shape), tuple(strides)

    def to_numpy(self):
        # Bounds check first: as_strided would otherwise read memory outside the buffer.
        if self.offset < 0 or any(stride < 0 for stride in self.strides):
            raise CheckpointError("tensor with a negative offset or stride")
        if math.prod(self.shape) > self.storage.numel:  # also stops huge copies of 0-stride views
            raise CheckpointError("tensor has more elements than its storage")
        if 0 not in self.shape:
            last = self.offset + sum((size - 1) * stride for size, stride in zip(self.shape, self.strides))
            if last >= self.storage.numel:
                raise CheckpointError("tensor reaches past the end of its storage")
        itemsize = self.storage.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            self.storage.data[self.offset:], self.shape, [stride * itemsize for stride in self.strides])
        return view.astype(self.storage.dtype.newbyteorder("="), order="C")  # a contiguous native-endian copy


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    if not isinstance(storage, _Storage) or len(size) != len(stride):
        raise CheckpointError("malformed tensor record")
    return _PendingTensor(storage, storage_offset, size, stride)


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that builds only OrderedDicts, storages and tensors."""

    def __init__(self, file, storages, byte_order):
        super().__init__(file)
        self._storages, self._byte_order = storages, byte_order

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise CheckpointError(f"refusing to load global {module}.{name}: a state dict needs only tensors")

    def persistent_load(self, pid):
        kind, storage_type, key, _location, numel, view = pid
        if kind != "storage" or not isinstance(storage_type, _StorageType):
            raise CheckpointError(f"unknown persistent id {kind!r}")
        if view is not None:
            raise CheckpointError("storage views are not supported")
        if key not in self._storages:
            self._storages[key] = _Storage(storage_type.dtype.newbyteorder(self._byte_order), numel)
        return self._storages[key]


def read_state_dict(path):
    """Return the state dict in the legacy torch file `path` as an OrderedDict name -> numpy array."""
    try:
        with open(path, "rb") as file:
            return _read(file)
    except CheckpointError:
        raise
    # MemoryError too: pickle raises it for a corrupted length field, before allocating anything large.
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError, AttributeError,
            MemoryError) as error:
        raise CheckpointError(f"not a legacy torch state dict ({type(error).__name__}: {error})") from error


def _read(file):
    storages = {}

    def load(byte_order="<"):
        return _RestrictedUnpickler(file, storages, byte_order).load()

    if load() != LEGACY_MAGIC:
        raise CheckpointError("missing the legacy torch.save magic number (zip-format files are not supported)")
    if load() != LEGACY_PROTOCOL:
        raise CheckpointError("unsupported torch.save protocol version")
    byte_order = "<" if load().get("little_endian", True) else ">"
    state_dict = load(byte_order)
    for key in load():
        storage = storages[key]
        count = int(np.frombuffer(file.read(8), dtype=f"{byte_order}i8")[0])
        if count != storage.numel:
            raise CheckpointError(f"storage {key} holds {count} elements, expected {storage.numel}")
        size = count * storage.dtype.itemsize
        if size > remaining(file):  # checked first: a corrupted count must not trigger a huge read
            raise CheckpointError(f"file ends inside storage {key}")
        raw = file.read(size)
        storage.data = np.frombuffer(raw, dtype=storage.dtype)
    if not isinstance(state_dict, dict) or not all(isinstance(v, _PendingTensor) for v in state_dict.values()):
        raise CheckpointError("top-level object is not a dict of tensors")
    if any(storage.data is None for storage in storages.values()):
        raise CheckpointError("some storages have no data")
    return collections.OrderedDict((name, tensor.to_numpy()) for name, tensor in state_dict.items())


def remaining(file):
    """Bytes left after the current position of a seekable file."""
    return os.fstat(file.fileno()).st_size - file.tell()
