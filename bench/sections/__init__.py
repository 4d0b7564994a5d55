"""The benchmark sections, in the report's order. Each module holds one section's measurement
(its `measure.py` commands, COMMANDS) and its report side by side: TITLE, verdicts(r) (the
rows it adds to the report's verdicts), write(r) (its part of the report; False when it has
no samples), DIG (its bullets of "How to dig further"); for some, machine(r) (rows of the
machine table), and, for those bench/run may skip, KEY (its samples' prefix, whose `KEY/skipped`
note says why), GOAL (its goal in the verdicts) and NEEDS (what it needs to run)."""

from sections import (plan, procs, serve, push, previews, pg, prs, ui, k8s, replicas,
                      wake, restart, policy)

SECTIONS = [plan, procs, serve, push, previews, pg, prs, ui, k8s, replicas, wake, restart,
            policy]
