"""Record the Perl oracle's answers to the lookup tests in expected.json.

Run from the repository root where amavisd-new is installed (it needs
/usr/share/perl5/Amavis/Lookup.pm):  python t/data/lookup/record.py
The test compares with the live oracle when it can, and with this file where
Perl or amavisd-new is absent; it fails when a case has no recorded answer.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from t.config.test_lookup import CASES, EXPECTED, LOOKUP_PM, case_id, run_oracle  # noqa: E402


def main() -> int:
    if not LOOKUP_PM.exists():
        print(f"{LOOKUP_PM} is missing: install amavisd-new to record", file=sys.stderr)
        return 1
    cases = [case for _, case in CASES]
    answers = {case_id(case): answer for case, answer in zip(cases, run_oracle(cases),
                                                             strict=True)}
    lines = [f"{json.dumps(key)}: {json.dumps(answers[key], ensure_ascii=False, sort_keys=True)}"
             for key in sorted(answers)]
    EXPECTED.write_text('{"source": "t/data/lookup/oracle.pl on amavisd-new 2.13",\n'
                        '"answers": {\n' + ",\n".join(lines) + "\n}}\n", encoding="utf-8")
    print(f"recorded {len(answers)} answers in {EXPECTED}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
