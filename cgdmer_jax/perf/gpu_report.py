"""The GPU check's report: the summary of its measurements and the markdown table
(`gpu_check.md`), kept apart from the measuring so each reads on its own."""

from __future__ import annotations

from typing import Any


def summary(ms: dict[str, dict], switches: dict[str, tuple]) -> dict[str, Any]:
  """Headline numbers from the measurements that finished (`switches`: name -> (the
  measurement it is compared with, its overrides))."""
  ok = {k: v for k, v in ms.items() if v.get("status") == "ok"}
  out: dict[str, Any] = {}
  if "base" in ok:
    out["base_mfu"] = ok["base"].get("mfu")
    out["base_examples_per_s"] = ok["base"]["examples_per_s"]
  for peer in ("stmem_compile", "stmem_eager"):
    if "stmem_ours" in ok and peer in ok:
      ours, theirs = ok["stmem_ours"]["examples_per_s"], ok[peer]["samples_per_s"]
      out[f"ours_over_{peer}"] = ours / theirs
  for name, (on, _) in switches.items():
    if name in ok and on in ok:
      out[f"{name}_time_vs_default"] = ok[name]["step_s_p50"] / ok[on]["step_s_p50"]
  return out


def _gflop(r: dict[str, Any]) -> str:
  x = r["flops_per_step_xla"]
  return f"{x / 1e9:.1f}" if x else f"{r['flops_per_step_analytic'] / 1e9:.1f} (analytic)"


def _gib(n) -> str:
  return "n/a" if n is None else f"{n / 2**30:.1f}"


def table(report: dict[str, Any]) -> str:
  """A markdown table of the measurements (status for those that did not finish)."""
  lines = ["| measurement | batch | compile s | step ms p50 | ex/s | GFLOP/step | MFU | "
           "memory GiB (program / allocator peak) | time vs default |",
           "|---|---|---|---|---|---|---|---|---|"]
  s = report.get("summary", {})
  for name, r in report["measurements"].items():
    if r.get("status") != "ok":
      lines.append(f"| {name} | {r.get('status')}: {r.get('reason') or r.get('error', '')[:120]}"
                   " | | | | | | | |")
      continue
    if "peer" in r:
      lines.append(f"| {name} (ST-MEM, compile {r['compile']}) | {r['batch']} | "
                   f"{sum(r['warmup_ms']) / 1e3:.1f} (warm-up) | {r['step_ms']['p50']:.1f} | "
                   f"{r['samples_per_s']:.1f} | | | | |")
      continue
    vs = s.get(f"{name}_time_vs_default")
    mfu = r.get("mfu")
    lines.append(
        f"| {name} | {r['global_batch']} | {r['compile_s']:.1f} | {1e3 * r['step_s_p50']:.1f} | "
        f"{r['examples_per_s']:.1f} | {_gflop(r)} | "
        f"{'n/a' if mfu is None else f'{100 * mfu:.1f}%'} | "
        f"{_gib(r.get('compiled_memory_bytes'))} / {_gib(r.get('peak_memory_bytes'))} | "
        f"{'' if vs is None else f'{vs:.2f}'} |")
  for k in ("ours_over_stmem_compile", "ours_over_stmem_eager"):
    if k in s:
      lines.append(f"\n{k.replace('_', ' ')}: {s[k]:.2f} x examples/s")
  if "watchdog" in report:
    lines.append(f"\nwatchdog: {report['watchdog']}")
  return "\n".join(lines) + "\n"
