"""AES-256-GCM decryption that lets other threads run: OpenSSL's EVP API through ctypes.

Why: `cryptography`'s `AESGCM.decrypt_into` (the version pinned in constraints.txt) keeps
the GIL for the whole call, so parallel unseal workers decrypt one at a time: AES-GCM then
caps an unseal at one core's speed however many cores there are. ctypes releases the GIL
around every foreign call, so the same OpenSSL code here runs on all workers at once.

This is not an implementation of the cipher: it calls the libcrypto that the interpreter
has already loaded for `hashlib`/`ssl` (found through /proc/self/maps), or the system's
`libcrypto` otherwise. `load()` returns None when no usable library is there, and the
caller falls back to `cryptography`. A known-answer check against `cryptography` (one good
record, one with a flipped bit) runs before the library is trusted.

The semantics are those of `AESGCM.decrypt_into`: the plaintext is written to `out` as it
is computed and the tag is checked at the end, so after a failed check `out` holds
unauthenticated bytes that the caller must wipe and never use. In-place operation (`out`
and `record` at the same address) is supported by OpenSSL's EVP_DecryptUpdate.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
import threading
from typing import Any

_P = ctypes.c_void_p
_INT = ctypes.c_int
_GCM_SET_TAG = 0x11
_KEY_SIZE = 32
_NONCE_SIZE = 12
_TAG_SIZE = 16
_MAX_LEN = (1 << 31) - 1  # EVP_DecryptUpdate takes an int length


def _loaded_libcrypto() -> str | None:
    """Path of the libcrypto this process has mapped already (hashlib's), if any."""
    try:
        import _hashlib  # noqa: F401  (maps libcrypto into the process)
    except ImportError:
        return None
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            for line in maps:
                path = line.rstrip("\n").split(maxsplit=5)[-1]
                name = os.path.basename(path)
                if name.startswith("libcrypto.so") and path.startswith("/"):
                    return path
    except OSError:
        return None
    return None


def _bind(lib: Any) -> None:
    sig: dict[str, tuple[Any, list[Any]]] = {
        "EVP_CIPHER_CTX_new": (_P, []),
        "EVP_CIPHER_CTX_free": (None, [_P]),
        "EVP_aes_256_gcm": (_P, []),
        "EVP_DecryptInit_ex": (_INT, [_P, _P, _P, _P, _P]),
        "EVP_DecryptUpdate": (_INT, [_P, _P, ctypes.POINTER(_INT), _P, _INT]),
        "EVP_DecryptFinal_ex": (_INT, [_P, _P, ctypes.POINTER(_INT)]),
        "EVP_CIPHER_CTX_ctrl": (_INT, [_P, _INT, _INT, _P]),
    }
    for name, (restype, argtypes) in sig.items():
        fn = getattr(lib, name)
        fn.restype = restype
        fn.argtypes = argtypes


class _Lib:
    def __init__(self, path: str) -> None:
        self.path = path
        self.lib = ctypes.CDLL(path)  # CDLL, not PyDLL: every call releases the GIL
        _bind(self.lib)
        self.cipher = self.lib.EVP_aes_256_gcm()
        if not self.cipher:
            raise OSError("EVP_aes_256_gcm returned NULL")
        try:  # OpenSSL 3: fetch once, so that each init skips the implicit fetch
            fetch = self.lib.EVP_CIPHER_fetch
            fetch.restype = _P
            fetch.argtypes = [_P, ctypes.c_char_p, ctypes.c_char_p]
            fetched = fetch(None, b"AES-256-GCM", None)
            if fetched:
                self.cipher = fetched  # kept for the life of the process
        except AttributeError:
            pass


def _address(buf: Any) -> tuple[int, Any]:
    """(address, keep-alive object) of a writable contiguous buffer."""
    holder = ctypes.c_char.from_buffer(buf)
    return ctypes.addressof(holder), holder


class GcmOpener:
    """Opens AES-256-GCM records (ciphertext || 16-byte tag) with one key. Thread-safe:
    each call uses its own EVP context."""

    def __init__(self, lib: _Lib, key: bytes) -> None:
        if len(key) != _KEY_SIZE:
            raise ValueError("AES-256-GCM needs a 32-byte key")
        self._lib = lib
        self._key = ctypes.create_string_buffer(key, _KEY_SIZE)
        self._lock = threading.Lock()
        self._closed = False

    @property
    def library(self) -> str:
        return self._lib.path

    def decrypt_into(self, nonce: bytes, record: Any, aad: bytes, out: Any) -> bool:
        """Open `record` into `out` (len(record) - 16 bytes; may be the same memory).

        Both must be writable buffers (bytearray, mmap, or memoryviews of them). Returns
        False when the tag does not verify (then `out` holds unauthenticated bytes).
        """
        rec = memoryview(record)
        dst = memoryview(out)
        n = len(rec) - _TAG_SIZE
        if len(nonce) != _NONCE_SIZE or n < 0 or len(dst) != n or n > _MAX_LEN:
            raise ValueError("bad nonce or buffer length for AES-256-GCM")
        if self._closed:
            raise ValueError("the key was wiped")
        tag = bytes(rec[n:])
        src_addr, src_keep = _address(rec)
        dst_addr, dst_keep = _address(dst) if n else (src_addr, None)
        lib = self._lib.lib
        ctx = lib.EVP_CIPHER_CTX_new()
        if not ctx:
            raise MemoryError("EVP_CIPHER_CTX_new failed")
        outl = _INT(0)
        try:
            if lib.EVP_DecryptInit_ex(ctx, self._lib.cipher, None, self._key, nonce) != 1:
                raise ValueError("EVP_DecryptInit_ex failed")
            if aad and lib.EVP_DecryptUpdate(ctx, None, ctypes.byref(outl), aad, len(aad)) != 1:
                raise ValueError("EVP_DecryptUpdate (aad) failed")
            if n:
                if lib.EVP_DecryptUpdate(ctx, dst_addr, ctypes.byref(outl), src_addr, n) != 1:
                    return False
                if outl.value != n:
                    raise ValueError("EVP_DecryptUpdate wrote an unexpected length")
            if lib.EVP_CIPHER_CTX_ctrl(ctx, _GCM_SET_TAG, _TAG_SIZE, tag) != 1:
                raise ValueError("setting the GCM tag failed")
            final = ctypes.create_string_buffer(16)
            return bool(lib.EVP_DecryptFinal_ex(ctx, final, ctypes.byref(outl)) == 1)
        finally:
            lib.EVP_CIPHER_CTX_free(ctx)  # cleanses the key schedule
            del src_keep, dst_keep

    def wipe(self) -> None:
        with self._lock:
            ctypes.memset(self._key, 0, _KEY_SIZE)
            self._closed = True


_STATE: dict[str, _Lib | None] = {}
_STATE_LOCK = threading.Lock()


def _self_test(lib: _Lib) -> bool:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    key, nonce, aad = os.urandom(32), os.urandom(12), b"modelseal/self-test"
    plain = os.urandom(4096 + 7)
    record = bytearray(AESGCM(key).encrypt(nonce, plain, aad))
    opener = GcmOpener(lib, key)
    try:
        out = bytearray(len(plain))
        if not opener.decrypt_into(nonce, record, aad, out) or bytes(out) != plain:
            return False
        in_place = bytearray(record)
        view = memoryview(in_place)
        if not opener.decrypt_into(nonce, view, aad, view[: len(plain)]):
            return False
        if bytes(in_place[: len(plain)]) != plain:
            return False
        record[100] ^= 1
        if opener.decrypt_into(nonce, record, aad, out):
            return False
        record[100] ^= 1
        record[-1] ^= 1
        return not opener.decrypt_into(nonce, record, aad, out)
    finally:
        opener.wipe()


def load() -> _Lib | None:
    """The checked libcrypto binding, or None (then use `cryptography`). Cached.

    MODELSEAL_AEAD=cryptography turns it off (for comparisons and tests).
    """
    if os.environ.get("MODELSEAL_AEAD", "").strip().lower() == "cryptography":
        return None
    with _STATE_LOCK:
        if "lib" in _STATE:
            return _STATE["lib"]
        lib: _Lib | None = None
        if sys.platform.startswith("linux") or sys.platform == "darwin":
            for path in (_loaded_libcrypto(), ctypes.util.find_library("crypto")):
                if not path:
                    continue
                try:
                    candidate = _Lib(path)
                    if _self_test(candidate):
                        lib = candidate
                        break
                except (OSError, AttributeError, ValueError):
                    continue
        _STATE["lib"] = lib
        return lib


def opener(key: bytes) -> GcmOpener | None:
    lib = load()
    return GcmOpener(lib, key) if lib is not None else None
