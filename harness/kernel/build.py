"""Configure and build a kernel out of tree, with a content-addressed cache.

Two levels of cache:
- a build directory per (source, arch, final .config), in which the kernel's
  own make does incremental work;
- a request record per (source content, arch, fragments, toolchain), so that a
  repeated identical request does no kernel work at all -- not even kconfig.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from harness import paths
from harness.arches import Arch
from harness.errors import BuildError, InfraError, OptionsDropped, UserError
from harness.files import write_json
from harness.kernel import elf, kconfig
from harness.kernel import options as kconfig_options
from harness.kernel.source import Source
from harness.proc import die_with_parent, kill_group
from harness.progress import clear_status, report, status

CACHE_VERSION = "1"
HOST_TOOLS = ("make", "gcc", "flex", "bison", "bc", "perl")
ERROR_RE = re.compile(r"(\berror:|\*\*\* \[|undefined reference|No rule to make target|"
                      r"fatal error|Error \d+)")
# The self-test's entry points: present in vmlinux only when CPA_DEBUG took effect.
CPA_SELFTEST_SYMBOLS = ("do_pageattr_test",)


@dataclass(frozen=True)
class BuildRequest:
    source: Source
    arch: Arch
    fragments: tuple[Path, ...]     # in merge order, arch fragments included
    sets: tuple[str, ...] = ()
    jobs: int = field(default_factory=lambda: os.cpu_count() or 1)
    # Build in one directory per tree path (and arch and config) whatever the
    # commit: bisect steps then rebuild only what the checkout changed.
    reuse_dir: bool = False
    # A machine's own configuration to start from instead of tinyconfig (a lab
    # box's), and its `lsmod`: the modules it uses are built in (localyesconfig)
    base_config: Path | None = None
    lsmod: Path | None = None

    def merged(self) -> kconfig.Merged:
        return kconfig.merge(self.fragments, self.sets)

    def wants_selftest(self) -> bool:
        opts = self.merged().options
        return opts.get("CONFIG_CPA_DEBUG", kconfig.Option("", "n", "")).value == "y"


@dataclass(frozen=True)
class Build:
    arch: str
    dir: Path
    image: Path
    vmlinux: Path
    config: Path
    source_id: str
    config_hash: str
    cached: bool            # True: no kernel work was done
    seconds: float
    log: Path
    version: str = ""       # the tree's kernel version, e.g. 6.1.158
    # Wanted features the tree could not give (kconfig.Unavailable.to_json() each)
    unavailable: tuple[dict[str, Any], ...] = ()

    def lacks(self, feature: str) -> dict[str, Any] | None:
        """The record of `feature` being unavailable in this kernel, if it is."""
        return next((u for u in self.unavailable if u["feature"] == feature), None)

    def unavailable_lines(self) -> list[str]:
        return [kconfig.unavailable_line(u, self.version) for u in self.unavailable]

    def config_text(self) -> str:
        return self.config.read_text(errors="replace")


def fragments_for(arch: Arch, names: list[str], base: str = "base") -> tuple[Path, ...]:
    """base (or box, on a lab box's own configuration), the arch's own
    fragments, then the named ones (shipped or paths)."""
    ordered = [base, *arch.fragments, *names]
    paths: list[Path] = []
    for n in ordered:
        p = kconfig.fragment_path(n)
        if p not in paths:
            paths.append(p)
    return tuple(paths)


def check_host_tools() -> list[str]:
    return [t for t in HOST_TOOLS if shutil.which(t) is None]


def toolchain_id() -> str:
    parts = []
    for tool in ("gcc", "ld", "make"):
        try:
            out = subprocess.run([tool, "--version"], capture_output=True, text=True,
                                 timeout=30).stdout
        except (OSError, subprocess.TimeoutExpired):
            out = "missing"
        parts.append(out.splitlines()[0] if out else "missing")
    return " | ".join(parts)


def _digest(*parts: str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode())
        h.update(b"\0")
    return h.hexdigest()


def _config_hash(config: bytes) -> str:
    # The header comment carries nothing the build depends on beyond CONFIG_ lines.
    lines = [ln for ln in config.decode(errors="replace").splitlines()
             if ln and not ln.startswith("# ") or ln.startswith("# CONFIG_")]
    return _digest(*lines)


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _artifact_record(files: list[Path]) -> dict[str, list[int | str]]:
    """Size, mtime and content hash of each artifact: a build directory whose
    kernel changed since (rebuilt by hand, truncated, corrupted) is not trusted."""
    return {str(p): [p.stat().st_size, p.stat().st_mtime_ns, _file_sha256(p)] for p in files}


# Present in a build directory while make runs in it. Found at the start of a
# build, it means the last one was interrupted (the harness SIGKILLed, the host
# rebooted): anything written since may be half-written, and make would trust
# it for its newer mtime.
BUILDING = ".cpa-harness-building"


def _discard_interrupted(bdir: Path) -> int:
    """Delete what an interrupted build wrote; the count of files deleted."""
    marker = bdir / BUILDING
    try:
        since = marker.stat().st_mtime_ns
    except FileNotFoundError:
        return 0
    gone = 0
    for root, _, files in os.walk(bdir):
        for name in files:
            f = Path(root) / name
            try:
                if f.lstat().st_mtime_ns >= since and f != marker:
                    f.unlink()
                    gone += 1
            except OSError:
                pass
    marker.unlink()
    return gone


def request_record(req: BuildRequest, cache: Path) -> Path | None:
    """Where a build of exactly this request is recorded (None: a tree without a
    content key, e.g. a git tree with local changes, is never taken on trust)."""
    if not req.source.cache_key:
        return None
    key = _digest(CACHE_VERSION, req.source.cache_key, req.arch.name, req.merged().text(),
                  kconfig_options.load().digest, toolchain_id(), *_base_digests(req))
    return cache / "requests" / f"{key}.json"


def _base_digests(req: BuildRequest) -> list[str]:
    """The machine's configuration and module list, when the build starts from them."""
    if req.base_config is None:
        return []
    parts = [req.base_config] + ([req.lsmod] if req.lsmod else [])
    try:
        return ["base"] + [_file_sha256(p) for p in parts]
    except OSError as e:
        raise InfraError(f"cannot read {e.filename}: {e.strerror}") from None


def build(req: BuildRequest, cache: Path, log_dir: Path | None = None) -> Build:
    missing = check_host_tools()
    if missing:
        raise InfraError(f"host tools missing to build a kernel: {', '.join(missing)}",
                         "run ci/setup.sh (or apt-get install flex bison bc libelf-dev "
                         "libssl-dev)")
    merged = req.merged()
    start = time.monotonic()
    record = request_record(req, cache)
    if record:
        hit = _cached(record, req, time.monotonic() - start)
        if hit:
            return hit

    src_tag = req.source.cache_key or _digest(str(req.source.path))[:16]
    if req.reuse_dir:
        src_tag = "tree-" + _digest(str(req.source.path))[:16]
    scratch = cache / "kconfig" / f"{src_tag}-{req.arch.name}"
    if req.base_config is not None:
        scratch = scratch.with_name(f"{scratch.name}-{_digest(*_base_digests(req))[:12]}")
    with paths.locked(scratch.with_suffix(".lock")):
        # Read under the lock: another process may configure here right after.
        config_path, survival = _configure(req, merged, scratch)
        final = config_path.read_bytes()
    unavailable = tuple(u.to_json() for u in survival.unavailable)
    cfg_hash = _config_hash(final)
    bdir = cache / "builds" / f"{req.arch.name}-{src_tag}-{cfg_hash[:12]}"
    with paths.locked(bdir.with_suffix(".lock")):
        bdir.mkdir(parents=True, exist_ok=True)
        gone = _discard_interrupted(bdir)
        if gone:
            report(f"build {req.arch.name}: the last build in {bdir} was interrupted; "
                   f"{gone} files it wrote are deleted and made again")
        image, vmlinux = bdir / req.arch.image, bdir / "vmlinux"
        if record:
            _discard_changed(record, [image, vmlinux])
        config = bdir / ".config"
        (bdir / BUILDING).touch()
        if not config.exists() or config.read_bytes() != final:
            config.write_bytes(final)
        log = bdir / "build.log"
        # A whole build (nothing compiled yet: init/main.o is among make's first
        # objects) is measured against the last whole build of this
        # configuration, in any tree: a percentage and the time left.
        whole = not (bdir / "init" / "main.o").exists()
        times = BuildTimes(cache / "build-times.json", f"{req.arch.name}-{cfg_hash[:16]}")
        try:
            _make(req, bdir, ["olddefconfig", req.arch.image.rsplit("/", 1)[-1]], log,
                  expected=times.last() if whole else None,
                  measured=times.record if whole else None)
        except BuildError:
            # make ended by itself and deleted its half-made target
            # (.DELETE_ON_ERROR): what it left is sound.
            (bdir / BUILDING).unlink()
            raise
        (bdir / BUILDING).unlink()
        elf.check_vmlinux(vmlinux, req.arch,
                          list(CPA_SELFTEST_SYMBOLS) if req.wants_selftest() else [])
        if log_dir:
            log_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(log, log_dir / f"build-{req.arch.name}.log")
        result = Build(req.arch.name, bdir, image, vmlinux, config, req.source.id, cfg_hash,
                       False, time.monotonic() - start, log, req.source.version, unavailable)
        if record:
            write_json(record, {
                "dir": str(bdir), "config_hash": cfg_hash, "source_id": req.source.id,
                "version": req.source.version, "unavailable": list(unavailable),
                "artifacts": _artifact_record([image, vmlinux, config]),
            })
        return result


def _recorded(record: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(record.read_text())
        return data if isinstance(data, dict) and isinstance(data.get("artifacts"), dict) \
            else None
    except (OSError, ValueError):
        return None


def _cached(record: Path, req: BuildRequest, elapsed: float) -> Build | None:
    data = _recorded(record)
    try:
        if data is None:
            return None
        bdir = Path(data["dir"])
        arts = data["artifacts"]
        # A build directory that changed or lost a file since is rebuilt, not trusted.
        if _artifact_record([Path(p) for p in arts]) != arts:
            report(f"build {req.arch.name}: the cached kernel in {bdir} changed since it was "
                   "built; building it again")
            return None
        unavailable = tuple(u for u in data.get("unavailable", []) if isinstance(u, dict))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return Build(req.arch.name, bdir, bdir / req.arch.image, bdir / "vmlinux", bdir / ".config",
                 str(data["source_id"]), str(data["config_hash"]), True, elapsed,
                 bdir / "build.log", req.source.version, unavailable)


def _discard_changed(record: Path, artifacts: list[Path]) -> None:
    """Delete artifacts that differ from the request's record: make judges by
    mtime, so a truncated or corrupted bzImage newer than its inputs would stay."""
    data = _recorded(record)
    if data is None:
        return
    for art in artifacts:
        was = data["artifacts"].get(str(art))
        try:
            if was is not None and _artifact_record([art])[str(art)] != was:
                art.unlink()
        except OSError:
            pass


def _configure(req: BuildRequest, merged: kconfig.Merged,
               scratch: Path) -> tuple[Path, kconfig.Survival]:
    scratch.mkdir(parents=True, exist_ok=True)
    log = scratch / "kconfig.log"
    log.write_text("")
    config = scratch / ".config"
    if req.base_config is None:
        _make(req, scratch, ["tinyconfig"], log, quiet=True)
    else:
        _from_machine(req, config, log)
    known = kconfig_options.load()
    kconfig.apply(config, merged, known)
    _make(req, scratch, ["olddefconfig"], log, quiet=True)
    survival = kconfig.check_survival(merged, kconfig.read_config(config), req.source.path,
                                      known)
    if survival.dropped:
        lines = "\n  ".join(d.line() for d in survival.dropped)
        raise OptionsDropped(f"{len(survival.dropped)} essential option(s) did not survive "
                             f"olddefconfig for {req.arch.name} on {req.source.version}:\n"
                             f"  {lines}",
                             "enable the dependencies too, or drop the option from the "
                             "fragment (docs/kconfig.md lists the essential options)",
                             tuple(d.option.name for d in survival.dropped))
    return config, survival


def _from_machine(req: BuildRequest, config: Path, log: Path) -> None:
    """A machine's own configuration, brought to this tree, with the modules its
    `lsmod` lists built in and every other module left out: the kernel under
    test boots with the harness's initramfs and no module tree, so what the
    machine needs (its NIC, its disk and serial controllers) must be in the image."""
    assert req.base_config is not None
    try:
        shutil.copyfile(req.base_config, config)
    except OSError as e:
        raise InfraError(f"cannot copy {req.base_config}: {e.strerror}") from None
    _make(req, config.parent, ["olddefconfig"], log, quiet=True)
    if req.lsmod is not None:     # without it, localyesconfig would read this host's
        # absolute: make runs the script in the build directory
        _make(req, config.parent, [f"LSMOD={req.lsmod.resolve()}", "localyesconfig"], log,
              quiet=True)


def _make(req: BuildRequest, out: Path, targets: list[str], log: Path,
          quiet: bool = False, expected: tuple[int, float] | None = None,
          measured: Callable[[int, float], None] | None = None) -> None:
    """make with its output to `log`; `expected` (lines, seconds) of the last
    such build for the progress display; `measured` told this one's, when it
    succeeds."""
    argv = ["make", "-C", str(req.source.path), f"O={out}", f"ARCH={req.arch.make_arch}",
            f"-j{req.jobs}", *targets]
    if req.reuse_dir and shutil.which("ccache"):
        # Bisect steps: what make must rebuild after a checkout, ccache may still
        # know from an earlier step (e.g. going back to a revision already built).
        argv.append("CC=ccache gcc")
    progress = None if quiet else Progress(f"build {req.arch.name}", expected)
    with open(log, "a") as logf:
        logf.write(f"$ {' '.join(argv)}\n")
        logf.flush()
        proc = start_make(argv, subprocess.PIPE)
        stop = _stop.get()
        if stop is not None:
            threading.Thread(target=_kill_on, args=(stop, proc), daemon=True).start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                logf.write(line)
                logf.flush()    # someone may be following the log (tail -f)
                if progress:
                    progress.line(line)
            rc = proc.wait()
        except BaseException:
            kill_group(proc)
            raise
        finally:
            if progress:
                progress.done()
    if stop is not None and stop.is_set():
        # make's own exit status after the kill would read as a broken build
        raise InfraError(f"the build of {req.arch.name} was stopped: the run is stopping")
    if rc < 0:
        # Killed (the OOM killer?): make could not delete its half-made target,
        # and the kernel is not to blame. The building marker stays.
        raise InfraError(f"make was killed by signal {-rc} while building "
                         f"{req.arch.name}; log: {log}", "see the host's kernel log (OOM?)")
    if rc != 0:
        _raise_build_failure(req, log, targets)
    if measured is not None and progress is not None:
        measured(progress.count, time.monotonic() - progress.start)


_stop: ContextVar[threading.Event | None] = ContextVar("stop", default=None)


@contextmanager
def stopped_by(event: threading.Event) -> Iterator[None]:
    """Every make this thread runs in the block is killed when `event` is set:
    a run that stops while its kernels build in a thread of their own."""
    token = _stop.set(event)
    try:
        yield
    finally:
        _stop.reset(token)


def _kill_on(stop: threading.Event, proc: subprocess.Popen[str]) -> None:
    while proc.poll() is None:
        if stop.wait(0.5):
            kill_group(proc)
            return


def _make_preexec() -> None:
    die_with_parent()
    # Guests beside a build (cells started as their kernel was built, another
    # run) come first: a guest starved of CPU is a false soft lockup, a slower
    # build only a later start. The scheduler counts niced work as yielding.
    # make leads a session of its own, so with autogroups (sched(7)) its nice
    # value weighs only inside its group: the group's is what a guest sees.
    os.nice(10)
    try:
        with open("/proc/self/autogroup", "w") as f:
            f.write("10")
    except OSError:
        pass        # no autogroups: the nice value alone counts


def start_make(argv: list[str], stdout: IO[str] | int) -> subprocess.Popen[str]:
    """Every make the harness runs in a build directory: its environment
    (make_env), a session of its own (a terminal's Ctrl-C reaches the harness
    alone, and kill_group reaches every job make started), yielding to guests
    (_make_preexec)."""
    return subprocess.Popen(argv, stdout=stdout, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, env=make_env(), text=True,
                            errors="replace", start_new_session=True,
                            preexec_fn=_make_preexec)


def make_env() -> dict[str, str]:
    """The environment of every make in a build directory. The kernel's
    include/generated/compile.h holds who built it and where: a make there
    with another user or host (a module build's `make modules`) rewrites it,
    and the next kernel build relinks vmlinux into another image than the
    one the cache recorded."""
    return dict(os.environ, KBUILD_BUILD_USER="cpa-harness", KBUILD_BUILD_HOST="cpa-harness")


class BuildTimes:
    """Lines and seconds of the last whole build of each configuration
    (cache/build-times.json): what a build's progress is measured against."""

    def __init__(self, path: Path, key: str) -> None:
        self.path, self.key = path, key

    def _read(self) -> dict[str, Any]:
        try:
            doc = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return doc if isinstance(doc, dict) else {}

    def last(self) -> tuple[int, float] | None:
        entry = self._read().get(self.key)
        if not isinstance(entry, dict):
            return None
        lines, seconds = entry.get("lines"), entry.get("seconds")
        if isinstance(lines, int) and lines > 0 and isinstance(seconds, (int, float)):
            return lines, float(seconds)
        return None

    def record(self, lines: int, seconds: float) -> None:
        with paths.locked(self.path.with_suffix(".lock")):
            doc = self._read()
            doc[self.key] = {"lines": lines, "seconds": round(seconds, 1), "when": time.time()}
            write_json(self.path, doc)


def _raise_build_failure(req: BuildRequest, log: Path, targets: list[str]) -> None:
    text = log.read_text(errors="replace")
    if "No space left on device" in text:
        raise InfraError(f"no disk space while building {req.arch.name} (log: {log})",
                         f"free space under {log.parent}")
    if "is not clean, please run 'make ARCH=" in text or "source directory is not clean" in text \
            or "please run 'make mrproper'" in text:
        raise UserError(f"the kernel tree {req.source.path} has in-tree build files, so an "
                        "out-of-tree build refuses it",
                        f"run 'make mrproper' in {req.source.path}")
    errors = [ln for ln in text.splitlines() if ERROR_RE.search(ln)][:10]
    raise BuildError(f"building {req.arch.name} ({' '.join(targets)}) failed; log: {log}",
                     "the first errors are above", log=str(log), errors=errors)


class Progress:
    """make's progress: the status line, redrawn; and a line a minute (CI logs).
    Against the last whole build of the configuration (`expected`: its lines
    and seconds), a percentage of its lines and the time left at this pace."""

    def __init__(self, what: str, expected: tuple[int, float] | None = None) -> None:
        self.what = what
        self.expected = expected
        self.start = time.monotonic()
        self.drawn = self.said = self.start
        self.count = 0

    def estimate(self, now: float) -> str:
        """'42%, about 3m10s left' ('' without a last build to go by)."""
        if self.expected is None or self.count == 0:
            return ""
        lines, seconds = self.expected
        fraction = min(self.count / lines, 0.99)    # never 100 % before make ends
        elapsed = now - self.start
        # this build's own pace once it has one; the last build's before
        left = elapsed / fraction - elapsed if elapsed > 30 else seconds * (1 - fraction)
        return f"{fraction:.0%}, about {_duration(max(left, 0.0))} left"

    def line(self, line: str) -> None:
        self.count += 1
        now = time.monotonic()
        if now - self.drawn > 0.2:
            shown = self.estimate(now)
            status(f"{self.what}: {now - self.start:5.0f}s "
                   f"{shown + ' ' if shown else ''}{line.strip()[:60]}")
            self.drawn = now
        if now - self.said > 60:
            shown = self.estimate(now)
            report(f"{self.what}: {now - self.start:.0f}s, {self.count} lines"
                   f"{', ' + shown if shown else ''}")
            self.said = now

    def done(self) -> None:
        clear_status()
        report(f"{self.what}: make finished in {time.monotonic() - self.start:.0f}s")


def _duration(seconds: float) -> str:
    m, sec = divmod(int(seconds + 0.5), 60)
    return f"{m}m{sec:02d}s" if m else f"{sec}s"
