"""The benchmark sections, in the report's order. Each module holds one section's measurement
(its `measure.py` commands, COMMANDS) and its report side by side: TITLE, verdicts(r) (the
rows it adds to the report's verdicts), write(r) (its part of the report; False when it has
no samples), DIG (its bullets of "How to dig further") and, for some, machine(r) (rows of the
machine table)."""

from sections import plan, procs, serve, push, previews, pg, prs, ui

SECTIONS = [plan, procs, serve, push, previews, pg, prs, ui]
