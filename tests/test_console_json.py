"""The JSON document against its schema, the summary, and the parse CLI hook."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import jsonschema
import pytest

from harness.console import FAILURE_KINDS, ConsoleParser, parse_path
from harness.console.cli import main_parse
from harness.console.model import COMPLETED_BY, ENDED_BY
from harness.console.output import load_schema, summary
from harness.errors import UserError

DATA = Path(__file__).parent / "data" / "console"
LOGS = sorted(DATA.glob("*.log")) + sorted((DATA / "kinds").glob("*.log"))


@pytest.fixture(scope="module")
def schema() -> dict[str, object]:
    s = load_schema()
    jsonschema.Draft202012Validator.check_schema(s)
    return s


@pytest.mark.parametrize("path", LOGS, ids=lambda p: p.name)
def test_documents_validate(path: Path, schema: dict[str, object]) -> None:
    jsonschema.validate(parse_path(path).to_json(), schema)


def test_schema_enums_match_the_code(schema: dict[str, object]) -> None:
    defs = schema["$defs"]
    assert isinstance(defs, dict)
    assert defs["failure"]["properties"]["kind"]["enum"] == list(FAILURE_KINDS)
    assert defs["failure"]["properties"]["completed_by"]["enum"] == list(COMPLETED_BY)
    assert defs["boot"]["properties"]["ended_by"]["enum"] == [*ENDED_BY, None]


def test_live_document_validates_while_a_boot_runs(schema: dict[str, object]) -> None:
    p = ConsoleParser()
    p.feed("[    0.000000] Linux version 6.12.0 (x) #1\n[   31.0] CPA self-test:\n")
    doc = p.analysis.to_json()
    jsonschema.validate(doc, schema)
    assert doc["boots"][0]["ended_by"] is None
    assert doc["boots"][0]["cpa_selftest"][0]["result"] == "incomplete"


def test_empty_document(schema: dict[str, object]) -> None:
    analysis = ConsoleParser().finish()
    assert analysis.to_json() == {"boots": [], "lines": 0, "notes": [], "verdict": "incomplete"}
    jsonschema.validate(analysis.to_json(), schema)


def test_main_parse_json(tmp_path: Path) -> None:
    out = io.StringIO()
    assert main_parse(str(DATA / "x86_64-wx-warning.log"), True, None, out) == 1
    doc = json.loads(out.getvalue())
    assert doc["verdict"] == "fail"
    assert doc["boots"][0]["failures"][0]["title"] == "WARNING in verify_rwx"


def test_main_parse_summary_passing_log(tmp_path: Path) -> None:
    log = tmp_path / "good.log"
    log.write_text((DATA / "x86_64-wx-warning.log").read_text().replace(
        "WARNING: CPU: 0 PID: 1 at arch/x86/mm/pat/set_memory.c:665 verify_rwx+0x8f/0xa0",
        "Freeing unused decrypted memory: 2028K"))
    out = io.StringIO()
    assert main_parse(str(log), False, None, out) == 0
    text = out.getvalue()
    assert "boot 0: 6.12.117" in text
    assert "command line: console=ttyS0 panic=-1 nokaslr" in text
    assert "gbpages: yes, debug_pagealloc: no" in text
    assert "CPA self-test pass 1: pass" in text
    assert "4k 157664 large 201 gb 2 x 2560[ffff888000000000-ffff8880bfffffff] miss 0" in text
    assert "ended by: kexec" in text
    assert text.endswith("verdict: pass\n")


def test_summary_lists_failures_and_panics() -> None:
    text = summary(parse_path(DATA / "kinds" / "null_deref.log"))
    assert ("failure: null_deref: BUG: unable to handle kernel NULL pointer dereference in "
            "foo_init (line 1)") in text
    assert "panic: Attempted to kill init! exitcode=0x00000009 (line 32, after failure 1)" in text
    assert "ended by: panic" in text
    assert "kernel: unknown kernel (log starts mid-boot)" not in text


@pytest.mark.parametrize("content", [b"", b"\x00\xff\xfe" * 1000, b"\n\n\n"])
def test_no_kernel_output_is_incomplete(tmp_path: Path, content: bytes) -> None:
    log = tmp_path / "x.log"
    log.write_bytes(content)
    out = io.StringIO()
    assert main_parse(str(log), False, None, out) == 1
    assert "verdict: incomplete" in out.getvalue()
    out = io.StringIO()
    assert main_parse(str(log), True, None, out) == 1
    assert json.loads(out.getvalue())["verdict"] == "incomplete"


def test_missing_file_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError) as err:
        main_parse(str(tmp_path / "nope.log"), False, None, io.StringIO())
    assert "no such file" in err.value.line()


def test_directory_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError):
        main_parse(str(tmp_path), True, None, io.StringIO())


def test_unreadable_file_is_a_user_error(tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "secret.log"
    log.write_text("x\n")
    log.chmod(0)
    try:
        if os.geteuid() == 0:
            # root reads a mode-0 file; make the open fail as it would for a user
            def denied(*args: object, **kwargs: object) -> None:
                raise PermissionError(13, "Permission denied", str(log))
            monkeypatch.setattr(Path, "open", denied)
        with pytest.raises(UserError):
            main_parse(str(log), False, None, io.StringIO())
    finally:
        monkeypatch.undo()
        log.chmod(0o644)
