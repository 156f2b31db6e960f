"""Feeds saec mutated copies of the example specs; fails on any crash.

Usage: mutate_specs.py SAEC COUNT SEED SPEC...
Each mutant (bytes deleted, duplicated, swapped or replaced by random bytes
and tokens; or, for half of them, identifiers and numbers swapped for others,
so that they parse and reach Sema and MLIRGen) is compiled with --emit=mlir.
saec must exit with status 0 or 1 and, when it fails, print at least one
'error:' line and no internal error: never a signal, an assertion, a hang
(10 s limit), IR that fails to verify, or a silent failure.
"""
import random
import subprocess
import sys
import tempfile

saec, count, seed, specs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
rng = random.Random(seed)
sources = [open(s, "rb").read() for s in specs]
tokens = [b"{", b"}", b"(", b")", b"[", b"]", b",", b";", b"=", b"@", b"-", b"*",
          b"/", b"+", b"sae", b"dims", b"input", b"param", b"let", b"encode",
          b"decode", b"loss", b"topk", b"relu", b"k = 0", b"99999999999999999999",
          b"1e400", b"x", b"z", b"W_enc", b"\x00", b"\xff", b"\n", b"//", b"/*"]


def mutate_tokens(data):
    """Replaces identifiers by other identifiers of the file and numbers by
    edge values: mutants that parse and stress Sema and MLIRGen."""
    import re
    text = data.decode("utf-8", "replace")
    names = sorted(set(re.findall(r"[A-Za-z_][A-Za-z_0-9]*", text)))
    numbers = ["0", "1", "-1", "2", "7", "64", "1e9", "0.5", "n", "d", "k"]
    parts = re.split(r"([A-Za-z_][A-Za-z_0-9]*|[0-9]+(?:\.[0-9]*)?)", text)
    for _ in range(rng.randint(1, 3)):
        i = rng.randrange(len(parts))
        if re.fullmatch(r"[A-Za-z_][A-Za-z_0-9]*", parts[i]):
            parts[i] = rng.choice(names)
        elif re.fullmatch(r"[0-9]+(?:\.[0-9]*)?", parts[i]):
            parts[i] = rng.choice(numbers)
    return "".join(parts).encode()


def mutate(data):
    if rng.random() < 0.5:
        return mutate_tokens(data)
    data = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        pos = rng.randrange(len(data) + 1)
        op = rng.randrange(4)
        if op == 0 and data:
            del data[pos:pos + rng.randint(1, 20)]
        elif op == 1:
            data[pos:pos] = rng.choice(tokens)
        elif op == 2:
            data[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 4)))
        else:
            a = rng.randrange(len(data) + 1)
            data[pos:pos] = data[a:a + rng.randint(1, 30)]
    return bytes(data)


bad = 0
with tempfile.TemporaryDirectory() as tmp:
    for i in range(count):
        path = "%s/m%d.sae" % (tmp, i)
        with open(path, "wb") as f:
            f.write(mutate(rng.choice(sources)))
        try:
            p = subprocess.run([saec, path, "--emit=mlir", "-o", "/dev/null"],
                               capture_output=True, timeout=10)
        except subprocess.TimeoutExpired:
            print("HANG on mutant %d" % i)
            bad += 1
            continue
        err = p.stderr.decode("utf-8", "replace")
        internal = "internal error" in err or "could not be lowered" in err
        sanitizer = "Sanitizer" in err or "runtime error:" in err
        if p.returncode not in (0, 1) or internal or sanitizer or (p.returncode == 1 and "error:" not in err):
            print("mutant %d: status %d\n%s" % (i, p.returncode, err[-2000:]))
            print(open(path, "rb").read())
            bad += 1
print("%d mutants, %d failures" % (count, bad))
sys.exit(1 if bad else 0)
