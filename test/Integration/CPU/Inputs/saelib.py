"""A ctypes view of a saec-compiled library (runtime/include/sae/runtime/abi.h,
ABI version 3), for tests that call its entry points directly with NumPy
arrays: sae_forward, sae_gradient and sae_train_step.

It trusts nothing from the runtime library (libsae_runtime): the tests that use
it check the compiler's code against independent references.
"""
import ctypes
import json

import numpy as np

F32P = ctypes.POINTER(ctypes.c_float)
HYPER = ["lr", "beta1", "beta2", "eps", "bc1", "bc2", "clip", "sparsity"]


def _ptr(a):
    assert a.dtype == np.float32 and a.flags["C_CONTIGUOUS"], (a.dtype, a.flags)
    return a.ctypes.data_as(F32P)


def _array(arrays):
    arr = (F32P * max(1, len(arrays)))()
    for i, a in enumerate(arrays):
        arr[i] = _ptr(a)
    return arr


class Library:
    def __init__(self, path):
        self.lib = ctypes.CDLL(path)
        self.lib.sae_model_describe.restype = ctypes.c_char_p
        self.desc = json.loads(self.lib.sae_model_describe().decode())
        assert self.desc["abi_version"] == 3, self.desc["abi_version"]
        self.params = self.desc["params"]
        self.trainable = [p for p in self.params if p.get("trainable", True)]
        self.n_terms = len(self.desc["loss_terms"])
        self.n = self.desc["latents"]
        i64, u64 = ctypes.c_int64, ctypes.c_uint64
        self.lib.sae_forward.argtypes = [i64, ctypes.c_void_p, ctypes.c_void_p,
                                         u64, F32P, F32P]
        self.lib.sae_gradient.argtypes = [i64, ctypes.c_void_p,
                                          ctypes.c_void_p, u64,
                                          ctypes.c_void_p, F32P]
        self.lib.sae_train_step.argtypes = [i64, ctypes.c_void_p,
                                            ctypes.c_void_p, ctypes.c_void_p,
                                            ctypes.c_void_p, F32P, u64, F32P,
                                            F32P, F32P]
        self.lib.sae_init.argtypes = [u64, i64, ctypes.c_void_p,
                                      ctypes.c_void_p]

    def random_params(self, rng, scale=0.1):
        out = {}
        for p in self.params:
            out[p["name"]] = (rng.standard_normal(p["shape"]) * scale).astype(np.float32)
        return out

    def init(self, seed, x=None):
        ps = {p["name"]: np.zeros(p["shape"], np.float32) for p in self.params}
        arr = _array([ps[p["name"]] for p in self.params])
        rows = 0 if x is None else x.shape[0]
        xp = None if x is None else _ptr(x)
        rc = self.lib.sae_init(seed, rows, ctypes.cast(xp, ctypes.c_void_p), arr)
        assert rc == 0, rc
        return ps

    def _inputs(self, inputs):
        return _array([np.ascontiguousarray(a, dtype=np.float32) for a in inputs])

    def forward(self, inputs, params, seed=0):
        b = inputs[0].shape[0]
        xhat = np.zeros((b, self.desc["input"]["dim"]), np.float32)
        losses = np.zeros(1 + self.n_terms, np.float32)
        rc = self.lib.sae_forward(b, self._inputs(inputs),
                                  _array([params[p["name"]] for p in self.params]),
                                  seed, _ptr(xhat), _ptr(losses))
        assert rc == 0, rc
        return xhat, losses

    def gradient(self, inputs, params, seed=0):
        b = inputs[0].shape[0]
        grads = {p["name"]: np.zeros(p["shape"], np.float32) for p in self.trainable}
        losses = np.zeros(1 + self.n_terms, np.float32)
        rc = self.lib.sae_gradient(b, self._inputs(inputs),
                                   _array([params[p["name"]] for p in self.params]),
                                   seed, _array([grads[p["name"]] for p in self.trainable]),
                                   _ptr(losses))
        assert rc == 0, rc
        return grads, losses

    def train_step(self, inputs, params, m, v, hyper, seed=0):
        """Updates params, m and v (dicts of arrays) in place."""
        b = inputs[0].shape[0]
        h = np.array([hyper[k] for k in HYPER], np.float32)
        losses = np.zeros(1 + self.n_terms, np.float32)
        metrics = np.zeros(3, np.float32)
        fired = np.zeros(self.n, np.float32)
        rc = self.lib.sae_train_step(
            b, self._inputs(inputs),
            _array([params[p["name"]] for p in self.params]),
            _array([m[p["name"]] for p in self.trainable]),
            _array([v[p["name"]] for p in self.trainable]),
            _ptr(h), seed, _ptr(losses), _ptr(metrics), _ptr(fired))
        assert rc == 0, rc
        return losses, metrics, fired
