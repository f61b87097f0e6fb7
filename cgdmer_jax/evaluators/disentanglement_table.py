"""The printed table of the disentanglement diagnostics (`evaluators/disentanglement.py`)."""

from __future__ import annotations


def _ms(d: dict, digits: int = 3) -> str:
  return f"{d['mean']:.{digits}f} ± {d['std']:.{digits}f}"


def format_table(res: dict) -> str:
  """The printed summary of `disentanglement.diagnose`'s dict, one line per measure."""
  lines = [f"disentanglement diagnostics: {res['checkpoint']}",
           f"split {res['split']}: {res['records']} records, {res['records_with_report']} "
           f"with a report; seed {res['seed']}", ""]
  lines.append(f"{'per batch of ' + str(res['batch_size']):<34}{'real pairs':>18}"
               f"{'shuffled pairs':>18}  batches")
  for mod in ("ecg", "text"):
    b = res["per_batch"][mod]
    if "absent" in b:
      lines.append(f"{mod:<5} absent: {b['absent']}")
      continue
    chance = f"disentangle_loss (1/(B-1)={b['chance_loss']:.3f})"
    lines.append(f"{mod:<5}{chance:<29}{_ms(b['loss']['real'], 4):>18}"
                 f"{_ms(b['loss']['shuffled'], 4):>18}  {b['batches']}")
    lines.append(f"{mod:<5}{'debiased CKA':<29}{_ms(b['cka']['real']):>18}"
                 f"{_ms(b['cka']['shuffled']):>18}")
  whole = "  ".join(f"{mod} {w['cka']:.3f} ({w['rows']} rows)" if "absent" not in w
                    else f"{mod} absent" for mod, w in res["whole_split"].items())
  lines += ["", f"debiased CKA shared vs specific, whole split: {whole}", ""]
  lines.append(f"{'space':<15}{'width':>6}{'eff. rank':>11}{'std min':>10}{'median':>10}"
               f"{'max':>10}")
  for name, s in res["spaces"].items():
    if "absent" in s:
      lines.append(f"{name:<15} absent: {s['absent']}")
      continue
    lines.append(f"{name:<15}{s['width']:>6}{s['effective_rank']:>11.1f}{s['std_min']:>10.4f}"
                 f"{s['std_median']:>10.4f}{s['std_max']:>10.4f}")
  lines += ["", f"{'head error, branch -> batch mean':<34}{'unmodified':>11}"
            f"{'specific':>10}{'shared':>10}"]
  for head, label in (("ecg_mse", "masked-ECG MSE"), ("text_ce", "masked-report CE")):
    a = res["ablation"][head]
    if "absent" in a:
      lines.append(f"{label:<34} absent: {a['absent']}")
      continue
    lines.append(f"{label:<34}{a['model']:>11.4f}{a['specific_mean']:>10.4f}"
                 f"{a['shared_mean']:>10.4f}")
  lines += ["", "ridge: report shared -> ECG space, held-out R² (variance weighted)"]
  for name, r in res["ridge"].items():
    lines.append(f"  {name:<13} absent: {r['absent']}" if "absent" in r else
                 f"  {name:<13} R² {r['r2']:.3f} (alpha {r['alpha']:g}, {r['train']} train / "
                 f"{r['test']} test)")
  return "\n".join(lines)
