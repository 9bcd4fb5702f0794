"""The study's figures, drawn from the tables of `llmq_core.report`."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

CHANCE = {"piqa": 50.0, "arc_easy": 25.0, "arc_challenge": 25.0, "hellaswag": 25.0, "winogrande": 50.0}


def setting_label(table: pd.DataFrame) -> pd.Series:
    """'RTN g128', 'SmoothQuant per-channel (weights and activations) [smoothing=False]': what a line stands for."""
    group = table["group_size"].map(lambda g: "per-channel" if pd.isna(g) else f"g{int(g)}")
    activations = table["abits"].map(lambda a: "" if a == 16 else " (weights and activations)")
    options = table.get("options", pd.Series("", index=table.index)).map(lambda o: f" [{o}]" if o else "")
    return table["method"] + " " + group + activations + options


def _panel_grid(count: int, max_cols: int, width: float, height: float) -> tuple[plt.Figure, list[plt.Axes]]:
    """`count` panels, at most `max_cols` a row; the unused cells of the last row are blanked."""
    ncols = min(max_cols, count)
    nrows = -(-count // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False)
    for ax in axes.flat[count:]:
        ax.axis("off")
    return fig, list(axes.flat[:count])


def _lines_vs_bits(table: pd.DataFrame, columns: list[str], ylabel: str, log: bool, title: str,
                   reference: dict[str, float] | None = None) -> plt.Figure:
    """One panel per column (at most 3 a row): a line per method setting, FP16 dashed, chance dotted."""
    quantized = table[table["method"] != "FP16"].assign(setting=setting_label)
    baseline = table[table["method"] == "FP16"]
    settings = list(dict.fromkeys(quantized["setting"]))
    # more settings than the default palette's 10 colours would repeat colours: tab20 then
    palette = dict(zip(settings, sns.color_palette("tab10" if len(settings) <= 10 else "tab20", n_colors=len(settings))))
    fig, axes = _panel_grid(len(columns), 3, 4.6, 3.6)
    for ax, column in zip(axes, columns):
        sns.lineplot(data=quantized, x="wbits", y=column, hue="setting", style="setting", markers=True,
                     dashes=False, ax=ax, legend=True, palette=palette)
        if f"stderr_{column}" in quantized:  # +-1 standard error of an accuracy
            for setting, rows in quantized.groupby("setting"):
                ax.errorbar(rows["wbits"], rows[column], yerr=rows[f"stderr_{column}"], fmt="none",
                            ecolor=palette[setting], capsize=3, alpha=0.6)
        for value in baseline[column].dropna():
            ax.axhline(value, color="black", linestyle="--", linewidth=1, label="FP16")
        if reference and column in reference:
            ax.axhline(reference[column], color="grey", linestyle=":", linewidth=1, label="chance")
        ax.set(title=column, xlabel="weight bits", ylabel=ylabel)
        if log:
            ax.set_yscale("log")
        # log2 bits: the sub-2-bit methods (1.1, 1.7) stay readable beside 2, 3, 4 and 8
        bits = sorted(quantized["wbits"].unique())
        ax.set_xscale("log", base=2)
        ax.set_xticks(bits, [f"{b:g}" for b in bits])
        ax.minorticks_off()
    legend = {}
    for ax in axes:
        handles, labels = ax.get_legend_handles_labels()
        legend.update(zip(labels, handles))
        if ax.get_legend():
            ax.get_legend().remove()
    fig.legend(legend.values(), legend.keys(), loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_perplexity_vs_bits(table: pd.DataFrame, texts: list[str], path: Path, model: str) -> None:
    sizes = ", ".join(sorted(set(table["ppl_eval"].dropna()) - {""}))
    fig = _lines_vs_bits(table, texts, "perplexity (log)", log=True,
                         title=f"{model}: perplexity vs weight bits ({sizes or 'no texts'} tokens)")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def plot_accuracy_vs_bits(table: pd.DataFrame, tasks: list[str], path: Path, model: str) -> None:
    sizes = ", ".join(sorted(set(table["task_eval"].dropna()) - {""}))
    fig = _lines_vs_bits(table, tasks, "accuracy (%)", log=False, reference=CHANCE,
                         title=f"{model}: zero-shot accuracy vs weight bits ({sizes or 'no tasks'}; bars: +-1 s.e.)")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def plot_evaluation_sizes(table: pd.DataFrame, columns: list[str], path: Path, model: str) -> None:
    """The configurations measured under more than one evaluation (from `report.evaluations_table`), one row
    each and one marker per evaluation, so that what the quick sweep's limits change can be seen at a glance."""
    rows = table.assign(
        config=table["method"] + " W" + table["wbits"].map("{:g}".format)
        + table["abits"].map(lambda a: "" if a == 16 else f"A{a}")
        + table["group_size"].map(lambda g: "" if pd.isna(g) else f" g{int(g)}")
        + table.get("options", pd.Series("", index=table.index)).map(lambda o: f" [{o}]" if o else ""),
        evaluation=table["device"] + ": " + table["ppl_eval"] + ", tasks " + table["task_eval"])
    rows = rows[rows.groupby("config")["evaluation"].transform("nunique") > 1]
    order = list(dict.fromkeys(rows["config"]))  # the same rows in every panel, also where a value is missing
    fig, axes = _panel_grid(len(columns), 4, 3.4, 0.32 * len(order) + 1.4)
    for index, (ax, column) in enumerate(zip(axes, columns)):
        sns.stripplot(data=rows, y="config", x=column, hue="evaluation", order=order, ax=ax, size=7, jitter=False,
                      orient="h")
        if column in CHANCE:
            ax.axvline(CHANCE[column], color="grey", linestyle=":", linewidth=1)
        else:
            ax.set_xscale("log")
        ax.set(title=column, ylabel="", xlabel="accuracy (%)" if column in CHANCE else "perplexity (log)")
        if index % 4:
            ax.tick_params(axis="y", labelleft=False)
        ax.grid(axis="y", linewidth=0.3)
        handles, labels = ax.get_legend_handles_labels()
        ax.get_legend().remove()
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), frameon=False)
    fig.suptitle(f"{model}: the configurations measured under both evaluation sizes")
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_lora_ft(table: pd.DataFrame, columns: list[str], path: Path, title: str) -> None:
    """The LoRA-FT rows (from `report.lora_ft_table`, one device): a bar per method at each bit width, one
    panel per column (MMLU and zero-shot averages); FP16 dashed, chance dotted."""
    quantized = table[table["method"] != "FP16"].assign(bits=table["wbits"].map("{:g}".format))
    order = [m for m in ("NormalFloat", "NormalFloat + ICQ", "QLoRA", "IR-QLoRA") if m in set(quantized["method"])]
    bits = sorted(set(quantized["bits"]), key=float, reverse=True)
    fig, axes = _panel_grid(len(columns), 3, 4.2, 3.4)
    for ax, column in zip(axes, columns):
        sns.barplot(data=quantized, x="bits", y=column, hue="method", hue_order=order, order=bits, ax=ax)
        for value in table.loc[table["method"] == "FP16", column].dropna():
            ax.axhline(value, color="black", linestyle="--", linewidth=1, label="FP16")
        chance = 25.0 if column.startswith("mmlu") else CHANCE.get(column)
        if chance is not None:
            ax.axhline(chance, color="grey", linestyle=":", linewidth=1, label="chance")
        ax.set(title=column, xlabel="weight bits (NF-k)", ylabel="accuracy (%)")
        handles, labels = ax.get_legend_handles_labels()
        ax.get_legend().remove()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def plot_loss_curves(curves: dict[str, list[float]], steps: dict[str, int], path: Path, title: str) -> None:
    """Fine-tuning loss against step, one line per run (a stored curve is averaged over windows of steps)."""
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    for label, curve in curves.items():
        ax.plot([(i + 0.5) * steps[label] / len(curve) for i in range(len(curve))], curve, label=label)
    ax.set(xlabel="step", ylabel="training loss (response tokens, log)", title=title, yscale="log")
    ax.legend(frameon=False, fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
