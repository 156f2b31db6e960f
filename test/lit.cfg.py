# lit configuration for saec's regression tests.
import os
import shutil

import lit.formats
from lit.llvm import llvm_config

config.name = "SAE"
config.test_format = lit.formats.ShTest(not llvm_config.use_lit_shell)
config.suffixes = [".mlir", ".sae", ".test"]
config.excludes = ["Inputs", "CMakeLists.txt", "lit.cfg.py", "lit.site.cfg.py", "Unit"]
config.test_source_root = os.path.dirname(__file__)
config.test_exec_root = os.path.join(config.sae_obj_root, "test")

llvm_config.use_default_substitutions()
llvm_config.with_environment("PATH", config.llvm_tools_dir, append_path=True)
llvm_config.with_environment("PATH", config.sae_tools_dir, append_path=True)
# The Python reference implementations import numpy only.
llvm_config.with_environment("PYTHONDONTWRITEBYTECODE", "1")

config.substitutions.append(("%examples", os.path.join(config.sae_src_root, "examples")))
config.substitutions.append(("%inputs", os.path.join(config.test_source_root, "Inputs")))
# Debian's python3-numpy and python3-torch belong to the system interpreter.
python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else "python3"
config.substitutions.append(("%python", python))
config.substitutions.append(("%expect-exit", python + " " + os.path.join(config.test_source_root, "Inputs", "expect_exit.py")))
config.substitutions.append(("%saec_path", os.path.join(config.sae_tools_dir, "saec")))
config.substitutions.append(("%saec_dir", config.sae_tools_dir))
llvm_config.add_tool_substitutions(["saec", "sae-opt", "sae"], [config.sae_tools_dir])

# GPU features: PTX can be checked with ptxas anywhere; running needs a GPU.
ptxas = shutil.which("ptxas") or ("/usr/local/cuda/bin/ptxas" if os.path.exists("/usr/local/cuda/bin/ptxas") else None)
if ptxas:
    config.available_features.add("ptxas")
if os.path.exists("/dev/nvidia0") or os.path.exists("/dev/nvidiactl"):
    config.available_features.add("cuda")
# x86 features of the host, for tests that run code built for a named CPU
# (saec --target-cpu) here.
try:
    with open("/proc/cpuinfo") as f:
        flags = next((l.split(":", 1)[1].split() for l in f if l.startswith("flags")), [])
except OSError:
    flags = []
if "avx2" in flags and "fma" in flags:
    config.available_features.add("avx2")
import subprocess
if subprocess.call([python, "-c", "import numpy"], stderr=subprocess.DEVNULL) == 0:
    config.available_features.add("numpy")
# The training references use torch's autograd and torch.optim.Adam.
if subprocess.call([python, "-c", "import torch"], stderr=subprocess.DEVNULL) == 0:
    config.available_features.add("torch")
