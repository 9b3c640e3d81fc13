from __future__ import annotations

from pathlib import Path

import pytest

from harness.console import known as known_issues
from harness.errors import UserError
from harness.paths import KNOWN_ISSUES


def test_shipped_list_matches_verify_rwx_on_612_only() -> None:
    issues = known_issues.load(KNOWN_ISSUES)
    m = known_issues.match
    assert m(issues, "warning", "WARNING in verify_rwx", "6.12.117", "x86_64")
    assert not m(issues, "warning", "WARNING in verify_rwx", "6.13.0", "x86_64")
    assert not m(issues, "warning", "WARNING in verify_rwx", "6.12.117", "i386")
    assert not m(issues, "warning", "WARNING in pageattr_test", "6.12.117", "x86_64")
    assert not m(issues, "bug", "WARNING in verify_rwx", "6.12.117", "x86_64")
    assert not m(issues, "warning", "WARNING in verify_rwx", None, "x86_64")
    # the evidence it cites is in the repository
    for i in issues:
        assert (KNOWN_ISSUES.parent.parent / i.evidence).exists(), i.evidence


@pytest.mark.parametrize("text,msg", [
    ("[[issue]]\ntitle = 'x'\n", "lacks the key 'kind'"),
    ("[[issue]]\nkind = 'warning'\ntitle = '('\n", "not a regular expression"),
    ("[[issue]\n", "k.toml: not valid TOML for a known-issues file"),
])
def test_bad_files(tmp_path: Path, text: str, msg: str) -> None:
    f = tmp_path / "k.toml"
    f.write_text(text)
    with pytest.raises(UserError, match=msg):
        known_issues.load(f)
