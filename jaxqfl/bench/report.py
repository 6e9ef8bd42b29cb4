"""Benchmark results as JSON and as a markdown table."""
from __future__ import annotations

import json
import pathlib

COLUMNS = (
    ("workload", "workload", "{}"),
    ("rounds/s", "rounds_per_s", "{:.3g}"),
    ("client-steps/s", "client_steps_per_s", "{:,.0f}"),
    ("GFLOP/s", "gflops_per_s", "{:.1f}"),
    ("GB/s", "gbytes_per_s", "{:.1f}"),
    ("time / floor", "over_floor", "{:.2f}"),
    ("floor term", "floor_term", "{}"),
    ("loop round (s)", "loop_round_s", "{:.4g}"),
    ("jaxqfl round (s)", "round_s", "{:.4g}"),
    ("speed-up vs loop", "speedup_over_loop", "{:.1f}x"),
    ("compile (s)", "compile_s", "{:.1f}"),
    ("chunk x devices", None, None),
    ("peak RSS (GB)", "peak_rss_bytes", None),
)


def _cell(result: dict, key, fmt) -> str:
    if key is None:
        tuning = result.get("tuning")
        how = "" if not tuning else (" (tuned, cached)" if tuning["cache_hit"] else
                                     f" (tuned in {tuning['tuning_seconds']:.1f} s)")
        return f"{result['chunk_size']} x {result['num_devices']}{how}"
    value = result.get(key)
    if value is None:
        return "-"
    if key == "peak_rss_bytes":
        return f"{value / 1e9:.2f}"
    return fmt.format(value)


def markdown_table(results: list[dict]) -> str:
    """One row per workload (see ``COLUMNS``)."""
    head = "| " + " | ".join(name for name, _, _ in COLUMNS) + " |"
    rule = "|" + "|".join("---" for _ in COLUMNS) + "|"
    rows = ["| " + " | ".join(_cell(r, key, fmt) for _, key, fmt in COLUMNS) + " |" for r in results]
    return "\n".join([head, rule, *rows])


def machine_lines(machine: dict, peaks: dict) -> str:
    mem = machine.get("memory_bytes")
    return "\n".join(
        [
            f"- CPU: {machine['cpu']}, {machine['cpu_cores']} cores"
            + (f", {mem / 2**30:.0f} GiB memory" if mem else ""),
            f"- JAX {machine['jax']} (jaxlib {machine['jaxlib']}), backend {machine['backend']}, "
            f"{machine['num_devices']} device(s)",
            f"- measured peaks: matmul {peaks['flops'] / 1e9:.0f} GFLOP/s, copy {peaks['bandwidth'] / 1e9:.1f} GB/s",
        ]
    )


def write(out_dir, name: str, payload: dict) -> tuple[pathlib.Path, pathlib.Path]:
    """Write ``OUT/NAME.json`` (everything) and ``OUT/NAME.md`` (machine + table)."""
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / f"{name}.json", out / f"{name}.md"
    json_path.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    md = [
        f"# jaxqfl bench: {name}",
        "",
        machine_lines(payload["machine"], payload["peaks"]),
        "",
        markdown_table(payload["results"]),
        "",
    ]
    for note in payload.get("notes", []):
        md.append(f"- {note}")
    md_path.write_text("\n".join(md) + "\n")
    return json_path, md_path
