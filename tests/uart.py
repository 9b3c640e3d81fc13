"""A serial line shared by a shell and a kernel, for tests without QEMU.

Runs `sh` on this program's terminal (the test's pty) and copies what the
shell writes to it one byte at a time, as a UART sends it, with a kernel
printk record dropped in between bytes every few bytes: records then begin in
the middle of the shell's lines, as they do on a guest's console.

usage: python uart.py EVERY SEED
"""

from __future__ import annotations

import os
import random
import subprocess
import sys


def main() -> None:
    every, seed = int(sys.argv[1]), int(sys.argv[2])
    rng = random.Random(seed)
    sh = subprocess.Popen(["sh"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert sh.stdout is not None
    n, until = 0, rng.randint(1, every)
    while True:
        b = os.read(sh.stdout.fileno(), 1)
        if not b:
            break
        until -= 1
        if until == 0:
            n += 1
            os.write(1, f"[{n // 1000:5d}.{n % 1000:06d}][  T1] noise record {n}\r\n".encode())
            until = rng.randint(1, every)
        os.write(1, b)


if __name__ == "__main__":
    main()
