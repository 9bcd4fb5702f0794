import re
from pathlib import Path

import nbformat
import tomllib
import yaml

ROOT = Path(__file__).resolve().parent.parent


def test_environment_yml_installs_what_pyproject_declares():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = project["dependencies"] + project["optional-dependencies"]["dev"]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert sorted(p for p in pip if not p.startswith("-e")) == sorted(declared)
    assert "-e ." in pip


def test_every_registered_method_has_its_notebook_with_the_parameters_papermill_injects():
    import papermill

    from llmq_core.methods import METHODS

    for method in METHODS.values():
        notebook = ROOT / "notebooks" / method.notebook
        assert notebook.exists(), notebook
        declared = papermill.inspect_notebook(str(notebook))  # the cell tagged `parameters`
        assert {"model", "wbits", "device", "force"} <= declared.keys(), f"{notebook}: its parameters cell"


def test_sweeps_name_registered_methods_and_valid_settings():
    from llmq_core.config import RunConfig
    from llmq_core.methods import check_spec, get_method

    for sweep in (ROOT / "sweeps").glob("*.yaml"):
        spec = yaml.safe_load(sweep.read_text())
        for entry in spec["configs"]:
            config = RunConfig(**{**spec["defaults"], **entry})
            check_spec(get_method(config.method), config.spec)


def test_no_notebook_keeps_its_demonstration_inputs_through_the_whole_model_run():
    # the calibration inputs a notebook shows one layer on are 15 GB in fp32 at LLaMA-3-8B's down_proj and 128 x 2048
    # tokens; kept, the quantization and the evaluation hold them (the 8B rehearsal's GPTQ/PB-LLM/QuIP/BiLLM rows did)
    for path in sorted((ROOT / "notebooks").glob("*/*.ipynb")):
        cells = [cell.source for cell in nbformat.read(path, as_version=4).cells if cell.cell_type == "code"]
        run = next((i for i, source in enumerate(cells) if "quantize_model(model" in source), None)
        held = {match.group(1) for source in cells[:run] for match in
                re.finditer(r"^(\w+) = linear_calibration_inputs\(", source, re.MULTILINE)}
        freed = {name.strip() for source in cells[:run] for line in source.splitlines() if line.startswith("del ")
                 for name in line[4:].split(",")}
        assert held <= freed, f"{path.name}: del {', '.join(sorted(held - freed))} before the whole model is quantized"


def test_the_readme_layout_names_every_module_and_bench():
    readme = (ROOT / "README.md").read_text()
    layout = readme[readme.index("## Layout"):readme.index("\n## ", readme.index("## Layout"))]
    files = [*(ROOT / "llmq_core").rglob("*.py"), *(ROOT / "bench").glob("*.py"), *(ROOT / "bench").glob("*.sh"),
             *(ROOT / "bench").glob("*.yaml"), *(ROOT / "sweeps").glob("*.yaml")]
    missing = sorted(str(path.relative_to(ROOT)) for path in files
                     if path.name != "__init__.py" and path.name not in layout)
    assert not missing, f"README's Layout does not name {missing}"
