"""Kconfig fragments: parse, merge, and check that every request survived.

`make olddefconfig` silently drops an option whose dependencies are unmet
(LKDTM without RUNTIME_TESTING_MENU, say). A dropped option means the cell
would test something other than what it claims, so each one is an error that
names the option, the fragment that asked for it, and its unmet `depends on`
as read from the tree's Kconfig files.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import UserError
from harness.kernel.options import Feature, Knowledge
from harness.paths import CONFIGS_DIR

SET_RE = re.compile(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$")
UNSET_RE = re.compile(r"^# (CONFIG_[A-Za-z0-9_]+) is not set$")
# What kconfig accepts as a value: a tristate, a number (decimal or hex) or a
# quoted string. Anything else it drops with a warning, which would surface
# only after a configure step as a "did not survive" error.
VALUE_RE = re.compile(r'[ymn]|-?[0-9]+|(?:0[xX])?[0-9A-Fa-f]+|"(?:[^"\\]|\\.)*"')
NOT_SET = "n"


@dataclass(frozen=True)
class Option:
    name: str       # CONFIG_FOO
    value: str      # y, m, n (for "is not set"), a number or a quoted string
    origin: str     # fragment file name, or "--set"

    def line(self) -> str:
        if self.value == NOT_SET:
            return f"# {self.name} is not set"
        return f"{self.name}={self.value}"


def _shown(text: str) -> str:
    """A user's text quoted for an error line: escaped, and cut if long."""
    return repr(text) if len(text) <= 60 else repr(text[:60]) + "..."


def parse_line(text: str, origin: str, lineno: int = 0) -> Option | None:
    text = text.strip()
    if not text:
        return None
    where = f"{origin}:{lineno}" if lineno else origin
    m = SET_RE.match(text)
    if m:
        if not VALUE_RE.fullmatch(m.group(2)):
            raise UserError(f"{where}: {m.group(1)} has a value kconfig does not take: "
                            f"{_shown(m.group(2))}",
                            'write y, m, n, a number or a "quoted string"')
        return Option(m.group(1), m.group(2), origin)
    m = UNSET_RE.match(text)
    if m:
        return Option(m.group(1), NOT_SET, origin)
    if text.startswith("#"):
        return None
    raise UserError(f"{where}: not a Kconfig line: {_shown(text)}",
                    "write CONFIG_NAME=value or '# CONFIG_NAME is not set'")


def parse_fragment(path: Path) -> list[Option]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UserError(f"config fragment {path} does not exist",
                        f"name one of {', '.join(shipped_fragments())} or a file path") from None
    except IsADirectoryError:
        raise UserError(f"config fragment {path} is a directory",
                        "give a fragment file of CONFIG_NAME=value lines") from None
    except UnicodeDecodeError:
        raise UserError(f"config fragment {path} is not text (not UTF-8)",
                        "give a fragment file of CONFIG_NAME=value lines") from None
    except OSError as e:
        raise UserError(f"cannot read config fragment {path}: {e.strerror or e}") from None
    opts = []
    for n, line in enumerate(text.splitlines(), 1):
        opt = parse_line(line, path.name, n)
        if opt:
            opts.append(opt)
    return opts


def shipped_fragments() -> list[str]:
    return sorted(p.stem for p in CONFIGS_DIR.glob("*.config"))


def fragment_path(name: str) -> Path:
    """A shipped fragment by name ("cpa-test"), or a path to a user's file."""
    if "/" in name or name.endswith(".config") and Path(name).exists():
        return Path(name)
    stem = name.removesuffix(".config")
    path = CONFIGS_DIR / f"{stem}.config"
    if not path.exists():
        raise UserError(f"unknown config fragment {name!r}",
                        f"name one of {', '.join(shipped_fragments())} or a file path")
    return path


@dataclass
class Merged:
    options: dict[str, Option] = field(default_factory=dict)
    overrides: list[tuple[Option, Option]] = field(default_factory=list)

    def add(self, opt: Option) -> None:
        old = self.options.get(opt.name)
        if old is not None and old.value != opt.value:
            self.overrides.append((old, opt))
        self.options[opt.name] = opt

    def text(self) -> str:
        return "".join(o.line() + "\n" for o in self.options.values())


def merge(fragments: Iterable[Path], sets: Iterable[str] = ()) -> Merged:
    """Later fragments and --set options override earlier ones (recorded)."""
    merged = Merged()
    for path in fragments:
        for opt in parse_fragment(path):
            merged.add(opt)
    for s in sets:
        s = s if s.startswith(("CONFIG_", "#")) else f"CONFIG_{s}"
        one = parse_line(s, "--set")
        if one is None:
            raise UserError(f"--set {_shown(s)} is not an option",
                            "write --set CONFIG_NAME=value")
        merged.add(one)
    return merged


def parse_config(text: str) -> dict[str, str]:
    """A .config kconfig wrote (a build's, or a running kernel's /proc/config.gz),
    as {CONFIG_X: value}, 'n' for '# CONFIG_X is not set': read as it is, not
    checked like a user's fragment."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        m = SET_RE.match(line)
        if m:
            values[m.group(1)] = m.group(2)
        elif m := UNSET_RE.match(line):
            values[m.group(1)] = NOT_SET
    return values


def read_config(path: Path) -> dict[str, str]:
    return parse_config(path.read_text())


def _spellings(opt: Option, known: Knowledge) -> list[Option]:
    """The option under each name it has had: olddefconfig keeps the one the tree defines."""
    return [Option(f"CONFIG_{n}", opt.value, opt.origin)
            for n in known.names(opt.name.removeprefix("CONFIG_"))]


def apply(base: Path, merged: Merged, known: Knowledge) -> None:
    """Rewrite a .config so the merged options, under every name they have had,
    replace any earlier line."""
    wanted = [s for o in merged.options.values() for s in _spellings(o, known)]
    names = {o.name for o in wanted}
    kept = []
    for line in base.read_text().splitlines():
        m = SET_RE.match(line) or UNSET_RE.match(line)
        if m and m.group(1) in names:
            continue
        kept.append(line)
    base.write_text("\n".join(kept) + "\n" + "".join(o.line() + "\n" for o in wanted))


@dataclass(frozen=True)
class Dropped:
    option: Option
    got: str
    depends: str    # the unmet dependency, annotated with values, or why unknown

    def line(self) -> str:
        got = "not set" if self.got == NOT_SET else f"={self.got}"
        return (f"{self.option.name}={self.option.value} (from {self.option.origin}) "
                f"did not survive olddefconfig (got {got}): {self.depends}")


@dataclass(frozen=True)
class Unavailable:
    """A wanted feature the tree could not give: recorded, shown, never fatal."""

    feature: Feature
    dropped: tuple[Dropped, ...]

    def line(self, version: str) -> str:
        return unavailable_line(self.to_json(), version)

    def to_json(self) -> dict[str, Any]:
        return {"feature": self.feature.name, "title": self.feature.title,
                "without": self.feature.without,
                "options": [d.option.name for d in self.dropped],
                "why": [d.depends for d in self.dropped]}


def unavailable_line(u: dict[str, Any], version: str) -> str:
    """'LKDTM unavailable on 6.1.192: CONFIG_LKDTM depends on ...; what is lost', from
    an Unavailable's JSON (as build records keep it)."""
    why = (u.get("why") or ["?"])[0]
    options = u.get("options") or ["?"]
    return (f"{u.get('title', u.get('feature'))} unavailable on {version or 'this tree'}: "
            f"{options[0]} {why}; {u.get('without', '')}")


@dataclass
class Survival:
    dropped: list[Dropped] = field(default_factory=list)           # essential: refuse
    unavailable: list[Unavailable] = field(default_factory=list)   # wanted: record


def check_survival(merged: Merged, final: dict[str, str], src: Path,
                   known: Knowledge) -> Survival:
    """Which requested options olddefconfig dropped, essential ones apart from wanted ones.

    An option counts as kept under any of its names. A menu gate the tree does
    not define at all (CPU_MITIGATIONS before it existed) was never needed.
    """
    out = Survival()
    lost: dict[str, list[Dropped]] = {}
    deps: KconfigDeps | None = None
    for opt in merged.options.values():
        spellings = _spellings(opt, known)
        if any(final.get(s.name, NOT_SET) == opt.value for s in spellings):
            continue
        if deps is None:
            deps = KconfigDeps.read(src)
        symbols = [s.name.removeprefix("CONFIG_") for s in spellings]
        defined = [s for s in symbols if s in deps.defs]
        if not defined and known.is_gate(symbols[0]):
            continue
        if defined:
            why = deps.explain(defined[0], final)
        elif len(symbols) > 1:
            why = ("not defined in this tree's Kconfig under any of its names "
                   f"({', '.join(symbols)})")
        else:
            why = deps.explain(symbols[0], final)
        got = final.get(f"CONFIG_{defined[0]}" if defined else opt.name, NOT_SET)
        d = Dropped(opt, got, why)
        feature = known.feature_of(symbols[0])
        if feature is None:
            out.dropped.append(d)
        else:
            lost.setdefault(feature.name, []).append(d)
    out.unavailable = [Unavailable(known.features[f], tuple(ds)) for f, ds in lost.items()]
    return out


# --- a small reader of the config / depends on / if / menu structure ---------

ENTRY_RE = re.compile(r"^\s*(menuconfig|config)\s+([A-Za-z0-9_]+)\s*$")
BLOCK_RE = re.compile(
    r"^\s*(menu|choice|comment|if|endif|endmenu|endchoice|source|mainmenu)\b(.*)$")
HELP_RE = re.compile(r"^\s*(help|---help---)\s*$")
DEPENDS_RE = re.compile(r"^\s*depends\s+on\s+(.*)$")
SYMBOL_RE = re.compile(r"\b([A-Z][A-Z0-9_]+)\b")


@dataclass
class KconfigDeps:
    # symbol -> one list of dependency expressions per definition (file:line, exprs)
    defs: dict[str, list[tuple[str, list[str]]]]

    @classmethod
    def read(cls, src: Path) -> KconfigDeps:
        defs: dict[str, list[tuple[str, list[str]]]] = {}
        for path in _kconfig_files(src):
            for sym, where, exprs in _entries(path, src):
                defs.setdefault(sym, []).append((where, exprs))
        return cls(defs)

    def explain(self, sym: str, final: dict[str, str]) -> str:
        found = self.defs.get(sym)
        if not found:
            return "not defined in this tree's Kconfig (misspelt, removed, or newer than the tree)"
        parts = []
        for where, exprs in found:
            conjuncts = [c for e in exprs for c in _conjuncts(e)]
            unmet = [e for e in conjuncts if not _holds(e, final)]
            if unmet:
                parts.append(f"depends on {' && '.join(_annotate(e, final) for e in unmet)}"
                             f" ({where})")
        if not parts:
            return (f"its dependencies hold ({found[0][0]}); a choice, a select or a "
                    f"range may override it")
        return "; ".join(parts)


def _conjuncts(expr: str) -> list[str]:
    """Split at top-level &&, so that only the unmet parts are blamed."""
    parts, depth, cur = [], 0, ""
    i = 0
    while i < len(expr):
        ch = expr[i]
        depth += (ch == "(") - (ch == ")")
        if depth == 0 and expr.startswith("&&", i):
            parts.append(cur.strip())
            cur, i = "", i + 2
            continue
        cur += ch
        i += 1
    parts.append(cur.strip())
    return [" ".join(p.split()) for p in parts if p]


def _kconfig_files(src: Path) -> Iterator[Path]:
    for path in sorted(src.rglob("Kconfig*")):
        rel = path.relative_to(src).parts
        if rel[0] == "arch" and len(rel) > 1 and rel[1] != "x86":
            continue
        if rel[0] in ("Documentation", "tools", "scripts", "samples") or not path.is_file():
            continue
        yield path


def _logical_lines(path: Path) -> Iterator[tuple[int, str]]:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return
    buf, start = "", 0
    for n, line in enumerate(lines, 1):
        if not buf:
            start = n
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        yield start, buf + line
        buf = ""


def _entries(path: Path, src: Path) -> Iterator[tuple[str, str, list[str]]]:
    # Stack of enclosing conditions from `if` and `menu ... depends on` blocks.
    stack: list[tuple[str, list[str]]] = []
    current: tuple[str, str, list[str]] | None = None
    block: list[str] | None = None   # depends of the menu/choice just opened
    rel = path.relative_to(src)

    def enclosing() -> list[str]:
        return [e for _, exprs in stack for e in exprs]

    help_indent: int | None = None
    for lineno, line in _logical_lines(path):
        indent = len(line.expandtabs()) - len(line.expandtabs().lstrip())
        if help_indent is not None:
            if not line.strip() or indent > help_indent:
                continue    # help text is prose, not structure
            help_indent = None
        if HELP_RE.match(line):
            help_indent = indent
            continue
        m = ENTRY_RE.match(line)
        if m:
            if current:
                yield current
            current = (m.group(2), f"{rel}:{lineno}", enclosing())
            block = None
            continue
        m = BLOCK_RE.match(line)
        if m:
            kw, rest = m.group(1), m.group(2).strip()
            if current:
                yield current
                current = None
            block = None
            if kw == "if":
                stack.append(("if", [rest.split("#")[0].strip()]))
            elif kw in ("menu", "choice"):
                block = []
                stack.append((kw, block))
            elif kw in ("endif", "endmenu", "endchoice") and stack:
                stack.pop()
            continue
        m = DEPENDS_RE.match(line)
        if m:
            expr = m.group(1).split("#")[0].strip()
            if current:
                current[2].append(expr)
            elif block is not None:
                block.append(expr)
    if current:
        yield current


def _value(sym: str, final: dict[str, str]) -> str:
    return final.get(f"CONFIG_{sym}", NOT_SET)


def _annotate(expr: str, final: dict[str, str]) -> str:
    return SYMBOL_RE.sub(lambda m: f"{m.group(1)} [={_value(m.group(1), final)}]", expr)


def _holds(expr: str, final: dict[str, str]) -> bool:
    """Evaluate a dependency expression in y/m/n logic, as booleans (m counts as true)."""
    tokens: list[str] = re.findall(r"[A-Za-z0-9_]+|\"[^\"]*\"|&&|\|\||!=|=|!|\(|\)", expr)
    pos = 0

    def peek() -> str | None:
        return tokens[pos] if pos < len(tokens) else None

    def take() -> str:
        nonlocal pos
        pos += 1
        return tokens[pos - 1]

    def atom() -> bool:
        tok = take() if peek() else "n"
        if tok == "!":
            return not atom()
        if tok == "(":
            v = disj()
            if peek() == ")":
                take()
            return v
        lhs = _operand(tok, final)
        if peek() in ("=", "!="):
            op = take()
            rhs = _operand(take() if peek() else "", final)
            return (lhs == rhs) == (op == "=")
        return lhs not in (NOT_SET, "")

    def conj() -> bool:
        v = atom()
        while peek() == "&&":
            take()
            v = atom() and v
        return v

    def disj() -> bool:
        v = conj()
        while peek() == "||":
            take()
            v = conj() or v
        return v

    try:
        return disj()
    except IndexError:
        return True


def _operand(tok: str, final: dict[str, str]) -> str:
    if tok.startswith('"'):
        return tok.strip('"')
    if tok in ("y", "m", "n"):
        return tok
    return _value(tok, final)
