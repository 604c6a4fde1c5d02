"""What the make_readme.py scripts of notes/bench/*/ share: the per-GEMV timing table from a lab script's output."""
import re


def gemv_table(text, columns):
    """'-- name [N, K] ...' headers, then '  label   12.3 us' lines -> markdown rows of the chosen labels."""
    rows, name, cur = [], None, {}
    for line in text.splitlines():
        if line.startswith("-- "):
            if name:
                rows.append((name, cur))
            name, cur = line[3:].split(":")[0].strip(), {}
        m = re.match(r"\s+(.+?)\s+([\d.]+) us$", line)
        if m and name:
            cur[m.group(1).strip()] = float(m.group(2))
    if name:
        rows.append((name, cur))
    out = ["| matrix | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for name, cur in rows:
        out.append(f"| {name} | " + " | ".join(f"{cur[c]:.1f}" if c in cur else "" for c in columns) + " |")
    return "\n".join(out)
