"""Every file a report writes into its folder is listed in REPORT_FILES, the list a rerun checks before it
replaces an existing report folder (a file missing from it makes a rerun refuse that folder as foreign)."""

import re
from pathlib import Path

from peftarena_cli.report.build import REPORT_FILES

REPORT_PKG = Path(__file__).resolve().parents[1] / "peftarena_cli" / "report"


def test_every_written_report_file_is_known():
    written = set()
    for f in REPORT_PKG.glob("*.py"):
        written |= set(re.findall(r'tmp / "([^"]+)"', f.read_text(encoding="utf-8")))
    assert written, "the scan found no report files: the writers' form changed"
    assert written <= set(REPORT_FILES), sorted(written - set(REPORT_FILES))
