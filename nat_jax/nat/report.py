"""What a run shows a person: front plots and report.md, for one task
(`nat_jax.nat.transfer`, `nat_jax.nat.retarget`) and for many
(`nat_jax.nat.multitask`).

* `plot_front`: archive + nondominated front + picks + user baselines (PNG).
* `write_report`: `report.md` summarising the front and the selected subnets.
* `outlier_line`: Appendix F's outlier test of the top pick, as one sentence.
* `plot_pcp`: the parallel-coordinate plot of paper Appendix F, Fig. 26
  (left): one vertical axis per objective, one line per nondominated
  subnet, the high trade-off pick highlighted in dark blue.
* `plot_task_scatter`: per task, top-1 error vs MAdds of the joint archive,
  its nondominated set, the pick, the task's own single-task archive and
  its best subnet at similar MAdds.
* `write_multitask_report`: report.md of a many-task search from the summary
  and the per-iteration metrics.

Plain arrays and archives in, files out: nothing here imports the search.
"""

from __future__ import annotations

import math
import os
import pathlib
from typing import Any, Sequence

import numpy as np


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def axis_label(name: str) -> str:
    """"top1_error:digits" -> "digits\\nerror (%)"; "madds" -> "MAdds (M)"."""
    if name.startswith("top1_error:"):
        return f"{name.split(':', 1)[1]}\nerror (%)"
    return {"madds": "MAdds (M)", "params": "params (M)",
            "latency": "latency (ms)"}.get(name, name)


def plot_pcp(path: str | os.PathLike, F, labels: Sequence[str], highlight: int,
             title: str = "") -> None:
    """Parallel-coordinate plot of F[p, M] (Appendix F, Fig. 26 left).

    Each axis is min-max scaled over the p rows (lower = better at the
    bottom) and marked with its real minimum and maximum; row `highlight`
    is drawn thick in dark blue on top.
    """
    plt = _plt()
    F = np.asarray(F, np.float64)
    p, m = F.shape
    lo, hi = F.min(0), F.max(0)
    G = (F - lo) / np.where(hi > lo, hi - lo, 1.0)
    x = np.arange(m)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * m + 2), 4.6))
    for i in range(p):
        if i != highlight:
            ax.plot(x, G[i], color="tab:orange", alpha=0.55, lw=1.0)
    ax.plot(x, G[highlight], color="navy", lw=3.0, marker="o", zorder=5,
            label="high trade-off pick")
    for j in range(m):
        ax.axvline(j, color="k", lw=0.8)
        ax.annotate(f"{lo[j]:.4g}", (j, 0), xytext=(3, -12),
                    textcoords="offset points", fontsize=7)
        ax.annotate(f"{hi[j]:.4g}", (j, 1), xytext=(3, 4),
                    textcoords="offset points", fontsize=7)
    ax.set_xticks(x)
    ax.set_xticklabels(labels, fontsize=8)
    ax.set_yticks([])
    ax.set_ylim(-0.08, 1.1)
    ax.set_xlim(-0.3, m - 0.4)
    ax.plot([], [], color="tab:orange", label=f"nondominated ({p})")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)
    ax.set_title(title)
    pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_task_scatter(path: str | os.PathLike, task: str, joint, front, pick, own,
                      best=None) -> None:
    """Top-1 error vs MAdds on one task.

    Args:
      joint, front, own: (madds float[n], error float[n]) of the joint
        archive, its nondominated set (all objectives) and the task's own
        single-task archive (may be empty).
      pick: (madds, error) of the high trade-off pick.
      best: (madds, error) of the best own subnet at similar MAdds, or None.
    """
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.4, 4.2))
    if len(own[0]):
        ax.scatter(own[0], own[1], s=14, color="0.6", label="own (single-task) search")
    ax.scatter(joint[0], joint[1], s=16, color="tab:blue", alpha=0.6,
               label="joint archive")
    ax.scatter(front[0], front[1], s=30, facecolor="none", edgecolor="tab:red",
               label="nondominated (all objectives)")
    if best is not None:
        ax.scatter([best[0]], [best[1]], marker="s", s=70, color="k", zorder=5,
                   label="best on this task alone, similar MAdds")
    ax.scatter([pick[0]], [pick[1]], marker="*", s=260, color="gold",
               edgecolor="navy", zorder=6, label="high trade-off pick")
    ax.set_xlabel("MAdds (M)")
    ax.set_ylabel("top-1 error (%)")
    ax.set_title(task)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def _f(v, fmt: str = ".2f") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return format(v, fmt)


def write_multitask_report(path: str | os.PathLike, summary: dict,
                           metrics: Sequence[dict], sources: Sequence[str]) -> None:
    """report.md of a many-task search (`multitask.write_joint_results`)."""
    names = summary["objectives"]
    test = summary["outlier_test"]
    lines = [
        "# Many-task NAT search (paper Appendix F)", "",
        f"Tasks ({len(summary['tasks'])}): " + ", ".join(
            f"`{t}` ({s})" for t, s in zip(summary["tasks"], sources)),
        f"Objectives ({len(names)}): " + ", ".join(f"`{n}`" for n in names), "",
        "## High trade-off pick (Appendix C, Eq. 5)", "",
        f"Archive member {summary['pick']}, `{summary['pick_encoding']}` "
        f"(genes {summary['pick_genes']}"
        + (f", width {summary['pick_width']} of the tasks' supernets of widths "
           f"{summary['widths']}" if "pick_width" in summary else "")
        + f"), out of {len(summary['front'])} nondominated subnets.", ""]
    if test is None:
        lines.append("mu + 3 sigma test: not applicable (fewer than 2 finite "
                     "trade-off values).")
    else:
        verdict = "passes" if test["passes"] else "does not pass"
        lines.append(
            f"mu + 3 sigma test (Appendix F): the pick's trade-off value "
            f"{test['top_value']:.4g} vs the other {test['n'] - 1}: mean "
            f"{test['rest_mean']:.4g}, std {test['rest_std']:.4g}, threshold "
            f"{test['threshold']:.4g} (z = {test['z']:.2f}): it **{verdict}**.")
    lines += ["", f"## Each task: the pick vs the best subnet of the task's own "
              f"search with MAdds <= {summary['similar_madds']} x the pick's", "",
              "| task | classes | pick top-1 % | pick MAdds (M) | single-task "
              "top-1 % | its MAdds (M) | from | difference (pts) |",
              "|---|---|---|---|---|---|---|---|"]
    for r in summary["comparison"]:
        b = r["single_task"]
        diff = None if b is None else r["pick_top1"] - b["top1"]
        lines.append(
            f"| {r['task']} | {r['num_classes']} | {_f(r['pick_top1'])} | "
            f"{_f(r['pick_madds'], '.3f')} | {_f(b and b['top1'])} | "
            f"{_f(b and b['madds'], '.3f')} | {b['source'] if b else '-'} | "
            f"{_f(diff, '+.2f')} |")
    lines += ["", "## Iterations", "",
              "| iteration | archive | nondominated | hypervolume | search s | "
              "measure s | Kendall tau per task (new subnets) |",
              "|---|---|---|---|---|---|---|"]
    for m in metrics:
        t = m.get("times_s", {})
        taus = ", ".join(f"{k} {_f(v['kendall_tau'])}"
                         for k, v in m.get("predictor", {}).items())
        meas = sum(t.get("measure", {}).values()) if t.get("measure") else None
        lines.append(f"| {m['iteration']} | {m['archive_size']} | {m['n_front']} | "
                     f"{m['hypervolume']:.4f} | {_f(t.get('search'), '.1f')} | "
                     f"{_f(meas, '.1f')} | {taus} |")
    lines += ["", "Hypervolume: objectives scaled by 100 (errors) and by the "
              "initial archive's maximum x 1.05 (others), reference point 1; a "
              "Monte-Carlo estimate (PRNG key = iteration) beyond 3 objectives.",
              "", "![parallel coordinates](pcp.png)", ""]
    lines += [f"![{t}](scatter_{t}.png)" for t in summary["tasks"]]
    pathlib.Path(path).write_text("\n".join(lines) + "\n")


# ------------------------------------------------------------------ plots
def plot_front(path: str | os.PathLike, archive, names: Sequence[str],
               front: Sequence[int], picks: Sequence[int],
               baselines: dict[str, Sequence[float]] | None = None,
               title: str = "") -> None:
    """Scatter of top-1 error vs each other objective (one panel each)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    F = archive.objective_matrix(names)
    iters = np.array([e.iteration for e in archive.entries])
    n_panels = max(len(names) - 1, 1)
    fig, axes = plt.subplots(1, n_panels, figsize=(5.2 * n_panels, 4.2), squeeze=False)
    for j, ax in enumerate(axes[0], start=1):
        ok = np.isfinite(F[:, 0])
        sc = ax.scatter(F[ok, j], F[ok, 0], c=iters[ok], cmap="viridis", s=18,
                        alpha=0.7, label="archive (colour = iteration added)")
        if len(front):
            f = np.asarray(front)
            order = f[np.argsort(F[f, j])]
            ax.plot(F[order, j], F[order, 0], "-o", color="tab:red", ms=4,
                    label="nondominated (all objectives)")
        if len(picks):
            p = np.asarray(picks)
            ax.scatter(F[p, j], F[p, 0], marker="*", s=220, color="gold",
                       edgecolor="k", zorder=5, label="selected")
        for name, vals in (baselines or {}).items():
            if len(vals) == len(names):
                ax.scatter([vals[j]], [vals[0]], marker="s", color="k")
                ax.annotate(name, (vals[j], vals[0]), fontsize=8,
                            xytext=(4, 4), textcoords="offset points")
        ax.set_xlabel(_label(names[j]))
        ax.set_ylabel("top-1 error (%)")
        ax.grid(alpha=0.3)
        if j == 1:
            ax.legend(fontsize=7, loc="upper right")
    fig.colorbar(sc, ax=axes[0, -1], label="iteration")
    fig.suptitle(title)
    pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def _label(name: str) -> str:
    return {"madds": "#MAdds (M)", "params": "#params (M)",
            "latency": "latency (ms)"}.get(name, name)


# ----------------------------------------------------------------- report
def write_report(path: str | os.PathLike, config, archive, names: Sequence[str],
                 front: Sequence[int], picks: Sequence[int],
                 metrics: Sequence[dict[str, Any]],
                 outlier: dict[str, Any] | None = None,
                 working: Sequence[int] | None = None) -> None:
    """Markdown summary: run settings, per-iteration metrics, front, picks.

    Args:
      outlier: `tradeoff.outlier_test` of the front's trade-off values with
        `top_index` an archive index (Appendix F), or None (front < 2).
      working: the final working archive A (default: every entry).
    """
    space = archive.space
    n_work = len(archive) if working is None else len(working)
    lines = [f"# NAT transfer report: {config.dataset}", "",
             f"- config variant: `{config.variant}`, seed {config.seed}, search space "
             f"`{config.space}`, widths searched {list(space.widths)} (one "
             f"supernet each)",
             f"- supernet: `{config.supernet or 'random initialisation'}`",
             f"- objectives (minimised): {', '.join(names)}",
             f"- archive: {n_work} subnets in the working archive A "
             f"({len(archive)} ever measured, in archive.json); {len(front)} "
             f"nondominated in A", "",
             "## Iterations", "",
             "| iter | archive | hypervolume | best top-1 | Kendall tau (new) | "
             "time (s) | of it compiling (s) |", "|---|---|---|---|---|---|---|"]
    for m in metrics:
        times = m.get("times_s", {})
        t = sum(v for k, v in times.items() if not k.endswith("_compile"))
        c = sum(v for k, v in times.items() if k.endswith("_compile"))
        lines.append(f"| {m['iteration']} | {m['archive_size']} | "
                     f"{m['hypervolume']:.4f} | {m['best_top1']:.2f} | "
                     f"{m['kendall_tau_new']:.2f} | {t:.0f} | {c:.0f} |")
    header = ["#", "top-1 (%)", "top-5 (%)"] + [_label(n) for n in names[1:]] + [
        "res", "width", "depths", "encoding"]
    lines += ["", "## Selected subnets (high trade-off + most accurate)", "",
              outlier_line(outlier), "",
              "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for i in picks:
        lines.append(_row(i, archive, names, space))
    lines += ["", "## Nondominated front", "", "| " + " | ".join(header) + " |",
              "|" + "---|" * len(header)]
    for i in sorted(front, key=lambda i: archive.entries[i].error):
        lines.append(_row(i, archive, names, space))
    lines += ["", "![final front](plots/front_final.png)", ""]
    pathlib.Path(path).write_text("\n".join(lines))


def outlier_line(res: dict[str, Any] | None) -> str:
    """Appendix F's test of the top trade-off subnet as one sentence."""
    if res is None:
        return ("Appendix F outlier test: not applicable (fewer than two "
                "nondominated subnets).")
    verdict = "passes" if res["passes"] else "fails"
    return (f"Appendix F outlier test: top T = {res['top_value']:.4g} (subnet "
            f"#{res['top_index']}) vs mu + {res['n_sigma']:g} sigma = "
            f"{res['threshold']:.4g} (mu = {res['rest_mean']:.4g}, sigma = "
            f"{res['rest_std']:.4g}) over the other {res['n'] - 1} front members: "
            f"{verdict}" + (" (the top pick stands out statistically)." if
                            res["passes"] else " (no single subnet stands out; "
                            "consider every pick)."))


def _row(i: int, archive, names, space) -> str:
    e = archive.entries[i]
    arch = space.decode(e.genes)
    objs = [f"{e.objectives.get(n, float('nan')):.3f}" for n in names[1:]]
    return "| " + " | ".join([str(i), f"{e.top1:.2f}", f"{e.top5:.2f}", *objs,
                              str(arch.resolution), str(arch.width),
                              "".join(map(str, arch.d)),
                              "`" + arch.to_encoding(space) + "`"]) + " |"
