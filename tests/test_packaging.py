from pathlib import Path

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
