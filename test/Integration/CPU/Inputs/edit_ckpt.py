"""Makes broken copies of a checkpoint for the error tests.

  edit_ckpt.py drop SRC DST NAME            DST lacks tensor NAME
  edit_ckpt.py reshape SRC DST NAME R,C     DST's NAME has shape R x C
"""
import json
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(__file__))
import numpy as np  # noqa: E402
from saeref import read_safetensors, write_safetensors  # noqa: E402

cmd, src, dst, name = sys.argv[1:5]
tensors = read_safetensors(os.path.join(src, "sae_weights.safetensors"))
if cmd == "drop":
    del tensors[name]
elif cmd == "reshape":
    shape = [int(s) for s in sys.argv[5].split(",")]
    tensors[name] = np.zeros(shape, np.float32)
else:
    sys.exit("unknown command " + cmd)
os.makedirs(dst, exist_ok=True)
shutil.copy(os.path.join(src, "cfg.json"), dst)
write_safetensors(os.path.join(dst, "sae_weights.safetensors"), tensors)
