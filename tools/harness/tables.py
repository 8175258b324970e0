"""Each experiment's markdown table, from its results.json (the experiment's README and the
suite's README block)."""

from __future__ import annotations


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}"


def _num(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _level_names(r: dict) -> list[str]:
    """Column names of the tree levels: the label for a single one, the labels joined for up
    to three, "leaves" for the finest."""
    ordered = sorted(r["levels"].items(), key=lambda kv: int(kv[0]))
    names = []
    for i, (lv, labels) in enumerate(ordered):
        if i == len(ordered) - 1 and i > 0:
            names.append("leaves")
        elif len(labels) <= 3:
            names.append("/".join(labels))
        else:
            names.append(f"level {lv}")
    return names


def _arm_row(head: list[str], r: dict, tail: list[str]) -> str:
    """A table row: `head`, then an evaluation's denoiser evaluations per window, leaf Dice,
    leaf HD95, ECE and entropy AUROC, then `tail`."""
    cells = [
        str(r["denoiser_evals_per_window"]),
        _pct(r["dice_leaves"]),
        _num(r["hd95_leaves"], 2),
        _num(r["ece"]),
        _num(r["auroc_entropy_error"]),
    ]
    return "| " + " | ".join([*head, *cells, *tail]) + " |"


# ------------------------------------------------------------------------ the experiments


def multiscale(res: dict) -> str:
    """Dice per tree level of the multiscale and the single-output model, and the verdict."""
    first = res["arms"]["multiscale"]
    levels = _level_names(first)
    head = "| model | " + " | ".join(f"Dice {lv}" for lv in levels) + " | HD95 leaves (mm) |"
    lines = [head, "|---" * (len(levels) + 2) + "|"]
    for arm, r in res["arms"].items():
        dice = " | ".join(_pct(r["dice"][k]) for k in sorted(r["dice"], key=int))
        lines.append(f"| {arm.replace('_', ' ')} | {dice} | {_num(r['hd95_leaves'], 2)} |")
    diff = 100 * res["dice_leaves_difference"]
    verdict = (
        "at least as accurate as"
        if diff >= 0
        else f"**less accurate** than (by {_pct(-res['dice_leaves_difference'])} points)"
    )
    p = res["dice_leaves_paired"]
    spread = f", case by case {100 * p['sd']:.1f} s.d." if p["sd"] is not None else ""
    lines += [
        "",
        f"At the leaves the multiscale model is {verdict} the single-output one "
        f"({diff:+.1f} Dice points{spread}; better on {p['wins']} of {p['n']} test cases).",
    ]
    return "\n".join(lines)


def lowres(res: dict) -> str:
    """Dice per tree level of each model on each input."""
    c = res["coarse_spacing_mm"]
    first = res["arms"]["mixed_entry"]["full_res"]
    levels = _level_names(first)
    head = "| model | input | " + " | ".join(f"Dice {lv}" for lv in levels) + " |"
    lines = [head, "|---" * (len(levels) + 2) + "|"]
    inputs = {
        "full_res": f"{res['model_spacing_mm']:g} mm",
        "coarse_at_depth1": f"{c:g} mm, entered at depth 1",
        "coarse_upsampled": f"{c:g} mm, upsampled",
    }
    for arm, runs in res["arms"].items():
        for key, r in runs.items():
            dice = " | ".join(_pct(r["dice"][k]) for k in sorted(r["dice"], key=int))
            lines.append(f"| {arm.replace('_', ' ')} | {inputs[key]} | {dice} |")
    return "\n".join(lines)


def diffusion(res: dict) -> str:
    """The deterministic model and each diffusion ensemble."""
    lines = [
        "| model | Dice leaves | HD95 leaves (mm) | ECE | entropy AUROC for errors |",
        "|---|---|---|---|---|",
    ]
    for arm, r in res["arms"].items():
        cells = [
            arm.replace("_", " "),
            _pct(r["dice_leaves"]),
            _num(r["hd95_leaves"], 2),
            _num(r["ece"]),
            _num(r["auroc_entropy_error"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cost(res: dict) -> str:
    """Each sampler setting's cost and Dice, cheapest first."""
    lines = [
        "| sampler | denoiser evals / window | evals / case | s / case (median) | Dice leaves "
        f"| Dice leaves on {len(res['ddpm_cases'])} DDPM case(s) |",
        "|---|---|---|---|---|---|",
    ]
    for r in res["settings"]:
        cells = [
            r["setting"],
            str(r["denoiser_evals_per_window"]),
            f"{r['denoiser_evals_per_case']:g}",
            _num(r["median_seconds_per_case"], 1),
            f"{_pct(r['dice_leaves'])} (n={r['num_cases']})",
            _pct(r["dice_leaves_ddpm_cases"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def recipe(res: dict) -> str:
    """Each seed's two models, and the bar each seed meets or not."""
    lines = [
        "| seed | model | denoiser evals / window | Dice leaves | HD95 leaves (mm) | ECE "
        "| entropy AUROC for errors | s / case (median) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for seed, runs in res["seeds"].items():
        for arm, r in runs["arms"].items():
            lines.append(_arm_row([seed, arm], r, [_num(r["median_seconds_per_case"], 1)]))
    lines.append("")
    for seed, runs in res["seeds"].items():
        p = runs["dice_leaves_paired"]
        spread = f" ± {_pct(p['sd'])} s.d." if p["sd"] is not None else ""
        lines.append(
            f"- seed {seed}: diffusion minus deterministic {_pct(p['mean'])}{spread} "
            f"Dice points case by case, ahead on {p['wins']} of {p['n']} cases; Dice "
            f"{'within' if runs['dice_within_margin'] else '**not** within'} "
            f"{_pct(res['dice_margin'])} points, ECE "
            f"{'no worse' if runs['ece_no_worse'] else '**worse**'}, AUROC "
            f"{'at least' if runs['auroc_at_least'] else '**under**'} {res['min_auroc']}."
        )
    verdict = "met at every seed" if res["met"] else "**not met** at every seed"
    lines.append(f"- The bar is {verdict}.")
    return "\n".join(lines)


def screen(res: dict) -> str:
    """Each screened arm, and its leaf Dice minus the deterministic U-Net's case by case."""
    lines = [
        "| arm | denoiser evals / window | Dice leaves | HD95 leaves (mm) | ECE "
        "| entropy AUROC for errors | minus det, case by case |",
        "|---|---|---|---|---|---|---|",
    ]
    for arm, r in res["arms"].items():
        p = res["dice_leaves_paired_vs_det"].get(arm)
        vs = "—" if p is None else f"{_pct(p['mean'])} ({p['wins']}/{p['n']} ahead)"
        lines.append(_arm_row([arm], r, [vs]))
    return "\n".join(lines)


def _ratio(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}x"


def skips(res: dict) -> str:
    """Each skip design's cost and accuracy, and each design against the plain U-Net."""
    lines = [
        "| design | parameters | GFLOP / denoiser eval | s / denoiser eval | s / train step "
        "| Dice leaves | HD95 leaves (mm) | ECE | minus U-Net, case by case | s / case (median) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for d, r in res["arms"].items():
        c = res["costs"][d]
        p = res["dice_leaves_paired_vs_unet"].get(d)
        vs = "—" if p is None else f"{_pct(p['mean'])} ({p['wins']}/{p['n']} ahead)"
        cells = [
            d,
            f"{c['params']:,}",
            _num(c["gflop_per_denoiser_eval"], 1),
            _num(c["s_per_denoiser_eval"], 3),
            _num(c["s_per_train_step"], 3),
            _pct(r["dice_leaves"]),
            _num(r["hd95_leaves"], 2),
            _num(r["ece"]),
            vs,
            _num(r["median_seconds_per_case"], 1),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for d, p in res["dice_leaves_paired_vs_unet"].items():
        k = res["cost_ratio_vs_unet"][d]
        spread = f" ± {_pct(p['sd'])} s.d." if p["sd"] is not None else ""
        lines.append(
            f"- {d} minus U-Net: {_pct(p['mean'])}{spread} leaf Dice points case by case "
            f"(ahead on {p['wins']} of {p['n']}), for {_ratio(k['params'])} the parameters, "
            f"{_ratio(k['s_per_denoiser_eval'])} the time per denoiser evaluation and "
            f"{_ratio(k['s_per_train_step'])} per train step."
        )
    return "\n".join(lines)


SOTA_NAMES = {
    "msseg_diffusion": "msseg diffusion (default)",
    "msseg_deterministic": "msseg U-Net, deterministic",
    "dynunet": "nnU-Net's DynUNet (MONAI)",
    "monai_diffusion": "MONAI DiffusionModelUNet + DDIM",
    "monai_unet": "MONAI UNet",
}


def sota(res: dict) -> str:
    """Per budget: msseg's two models and every peer at equal wall-clock and at equal steps,
    with msseg's default diffusion model minus each, case by case."""
    lines = [
        "| budget | model | trained to | steps | train s | Dice brain | Dice tissue | Dice leaves "
        "| HD95 leaves (mm) | ECE | s / case (median) | msseg diffusion minus it, case by case |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def row(budget: str, name: str, trained_to: str, r: dict | None, p: dict | None) -> None:
        if r is None:
            cells = [budget, SOTA_NAMES[name], trained_to, "not reached", *["—"] * 8]
        else:
            levels = sorted(r["dice"], key=int)
            vs = "—"
            if p is not None:
                spread = f" ± {_pct(p['sd'])}" if p["sd"] is not None else ""
                vs = f"{_pct(p['mean'])}{spread} ({p['wins']}/{p['n']} ahead)"
            cells = [
                budget,
                SOTA_NAMES[name],
                trained_to,
                str(r["training"]["steps"]),
                _num(r["training"]["train_s"], 0),
                _pct(r["dice"][levels[0]]),
                _pct(r["dice"][levels[1]]) if len(levels) > 2 else "n/a",
                _pct(r["dice_leaves"]),
                _num(r["hd95_leaves"], 2),
                _num(r["ece"]),
                _num(r["median_seconds_per_case"], 1),
                vs,
            ]
        lines.append("| " + " | ".join(cells) + " |")

    for b, res_b in res["budgets"].items():
        label = f"{b} ({res_b['steps']} steps, {res_b['clock_s']:.0f} s)"
        for name, r in res_b["msseg"].items():
            row(label, name, "its budget", r, None)
        for peer in res["peers"]:
            for kind in ("time", "steps"):
                r, p = res_b[f"equal_{kind}"][peer], res_b[f"paired_vs_equal_{kind}"].get(peer)
                row(label, peer, f"equal {kind}", r, p)
    return "\n".join(lines)
