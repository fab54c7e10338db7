"""The names of the files in a run folder, in one place (a leaf module: anything may import it).

A run folder holds the journal (the source of truth), the plan it was made from, the lock,
and what the run wrote for people and programs: report, summary and, after a failure that
was not ours, an error log. `RunDir` (rundir.py) owns the folder; this module only names.
"""

from __future__ import annotations

JOURNAL_FILE = "journal.sqlite"
PLAN_PARQUET = "plan.parquet"
LOCK_FILE = "run.lock"
REPORT_PARQUET = "report.parquet"
REPORT_CSV = "report.csv"
SUMMARY_JSON = "summary.json"
ERROR_LOG = "error.log"
