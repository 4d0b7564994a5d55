#!/usr/bin/env python3
"""Puts the sections of a partial run (`BENCH_ONLY=... bench/run`, its report written by
bench/report.py to a temp file) into docs/benchmarks.md, keeping everything else the last full
run wrote, and saying which figures came from which run. bench/run calls it when BENCH_SPLICE
is set:

  splice.py --partial PARTIAL.md --into docs/benchmarks.md --only "replicas" [--load-start L]

- each numbered section that ran (`## N. ...`, not *skipped* nor *not run*) replaces the
  section of that number, or is inserted in number order, headed by a note with the partial
  run's date, command, slipway revision and load;
- its rows of the verdicts replace those with the same goal (or are added at the end),
  marked with the partial run's date;
- its rows of the machine table (a section's own: PostgreSQL, browser, ...) replace those of
  the same name or are added, with one row for the partial run itself;
- its bullets of "How to dig further" are added (one with the same start replaced);
- a line under the title says which sections come from which partial run (one line per set
  of sections, replaced by the next splice of the same ones).
A section skipped in the partial run (no server, say) is not spliced: the full run's stays.
"""

import argparse
import re
import sys

GENERIC_MACHINE = ("nproc", "CPU", "memory", "kernel", "date", "load average (1, 5, 15 min)",
                   "temp filesystem", "slipway", "supervisord", "python / git")
SPLICED = "> **Spliced in:** "


def blocks(text):
    """[(heading or "", lines)] split at `## ` headings; the first has no heading."""
    out = [("", [])]
    for line in text.splitlines():
        if line.startswith("## "):
            out.append((line, [line]))
        else:
            out[-1][1].append(line)
    return out


def section_number(heading):
    m = re.match(r"## (\d+)\. ", heading)
    return int(m.group(1)) if m else None


def table_rows(lines):
    """The markdown table rows of lines (header and rule included), with their indices."""
    return [(i, line) for i, line in enumerate(lines) if line.startswith("|")]


def first_cell(row):
    return row.strip().strip("|").split("|")[0].strip()


def unmark(goal):
    return re.sub(r" \*\(partial run of [^)]*\)\*$", "", goal)


def machine_value(lines, key):
    for _, row in table_rows(lines):
        if first_cell(row) == key:
            return row.strip().strip("|").split("|", 1)[1].strip()
    return "?"


def end_load(cell):
    """The end figures of the report's load cell, `at the start A B C; at the end D E F (…)`."""
    m = re.search(r"at the end ([0-9. ]+)", cell or "")
    return m.group(1).strip() if m else "?"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--partial", required=True)
    ap.add_argument("--into", required=True)
    ap.add_argument("--only", required=True)
    ap.add_argument("--load-start", default="?")
    args = ap.parse_args()
    with open(args.partial) as f:
        partial = blocks(f.read())
    with open(args.into) as f:
        target = blocks(f.read())
    part = {h: lines for h, lines in partial}
    machine = next((lines for h, lines in partial if h == "## Machine"), [])
    date = machine_value(machine, "date")
    load_end = end_load(machine_value(machine, "load average (1, 5, 15 min)"))
    slipway = machine_value(machine, "slipway")
    only = " ".join(args.only.split())
    command = f"BENCH_SPLICE=1 BENCH_ONLY=\"{only}\" bench/run"

    ran = []
    for heading, lines in partial:
        n = section_number(heading)
        body = "\n".join(lines)
        if n is None or "*Not run in this run*" in body or "**Skipped in this run**" in body:
            if n is not None and "**Skipped in this run**" in body:
                print(f"splice.py: section {n} was skipped in the partial run: the full "
                      "run's stays", file=sys.stderr)
            continue
        ran.append((n, heading, lines))
    if not ran:
        sys.exit("splice.py: no section of the partial run has figures: nothing spliced")
    numbers = ", ".join(str(n) for n, _, _ in ran)
    what = f"section{'s' if len(ran) > 1 else ''} {numbers}"
    note = (f"> *{what[0].upper() + what[1:]} from a partial run on {date}* (`{command}`; "
            f"{slipway}; load average at its start {args.load_start}, at its end "
            f"{load_end}). The machine "
            "table and every other section are from the full run above.")

    # Sections: replaced, or inserted in number order before "How to dig further".
    for n, heading, lines in ran:
        new = (heading, [heading, "", note] + lines[1:])
        at = next((i for i, (h, _) in enumerate(target) if section_number(h) == n), None)
        if at is not None:
            target[at] = new
            continue
        at = next((i for i, (h, _) in enumerate(target)
                   if (section_number(h) or 0) > n or h == "## How to dig further"),
                  len(target))
        target.insert(at, new)

    # Verdicts: the partial run's rows replace those of the same goal, else join the end.
    verdicts = next(lines for h, lines in target if h == "## Verdicts")
    new_rows = table_rows(part.get("## Verdicts", []))[2:]
    for _, row in new_rows:
        cells = row.strip().strip("|").split("|")
        goal = unmark(cells[0].strip())
        marked = "| " + " | ".join([f"{goal} *(partial run of {date})*"]
                                   + [c.strip() for c in cells[1:]]) + " |"
        rows = table_rows(verdicts)
        same = [i for i, r in rows[2:] if unmark(first_cell(r)) == goal]
        if same:
            verdicts[same[0]] = marked
        else:
            verdicts.insert(rows[-1][0] + 1, marked)

    # Machine table: a section's own rows, and one for the partial run.
    full_machine = next(lines for h, lines in target if h == "## Machine")
    extra = [r for _, r in table_rows(machine)[2:] if first_cell(r) not in GENERIC_MACHINE]
    extra.append(f"| partial run ({what}) | {date}; load average at the start "
                 f"{args.load_start}, at the end {load_end}"
                 f"; {slipway} |")
    for row in extra:
        rows = table_rows(full_machine)
        same = [i for i, r in rows if first_cell(r) == first_cell(row)]
        if same:
            full_machine[same[0]] = row
        else:
            before = [i for i, r in rows if first_cell(r) == "python / git"]
            full_machine.insert(before[0] if before else rows[-1][0] + 1, row)

    # How to dig further: the partial run's bullets, an older version of one replaced.
    dig = next(lines for h, lines in target if h == "## How to dig further")
    for bullet in [b for b in part.get("## How to dig further", []) if b.startswith("- ")]:
        if bullet in dig:
            continue
        same = [i for i, b in enumerate(dig) if b.startswith("- ") and b[:28] == bullet[:28]]
        if same:
            dig[same[0]] = bullet
        else:
            last = max(i for i, b in enumerate(dig) if b.startswith("- ")) if any(
                b.startswith("- ") for b in dig) else len(dig) - 1
            dig.insert(last + 1, bullet)

    # The reproduce block: bench/report.py's current one.
    reproduce = part.get("## Reproduce")
    at = next((i for i, (h, _) in enumerate(target) if h == "## Reproduce"), None)
    if reproduce and at is not None:
        old = target[at][1]
        start_new, end_new = [i for i, l in enumerate(reproduce) if l.startswith("```")][:2]
        start_old, end_old = [i for i, l in enumerate(old) if l.startswith("```")][:2]
        target[at] = (target[at][0], old[:start_old] + reproduce[start_new:end_new + 1]
                      + old[end_old + 1:])

    # Under the title: which sections come from which run.
    head = target[0][1]
    line = f"{SPLICED}{what} from a partial run on {date} (`{command}`); see its note there."
    head[:] = [h for h in head if not (h.startswith(SPLICED) and f" {what} from" in h)]
    last_para = max(i for i, h in enumerate(head) if h.strip())
    head[last_para + 1:last_para + 1] = ["", line]
    # The line removed leaves its blank line: one blank line between paragraphs, at most.
    head[:] = [h for i, h in enumerate(head) if h.strip() or i == 0 or head[i - 1].strip()]

    with open(args.into, "w") as f:
        f.write("\n".join(line for _, lines in target for line in lines).rstrip() + "\n")
    print(f"splice.py: {what} of {args.partial} spliced into {args.into}", file=sys.stderr)


if __name__ == "__main__":
    main()
