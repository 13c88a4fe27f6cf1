"""The notebooks: Colab-ready, saved clean, and running top to bottom on synthetic data.

Each notebook runs in a fresh Jupyter kernel on this interpreter, as a new user (or Colab)
runs it: with its parameters as saved, which means synthetic data and a tiny encoder
pretrained inside the notebook.
"""

import ast
import os
import pathlib
import re
import sys

import nbformat
import pytest
from ipykernel.kernelspec import install as install_kernelspec
from nbclient import NotebookClient

from ecgfm.demo import demo_config

NOTEBOOKS = pathlib.Path(__file__).resolve().parents[1] / "notebooks"
NAMES = (
    "quickstart.ipynb",
    "transfer_ptbxl.ipynb",
    "inspect_dataset.ipynb",
    "import_and_probe.ipynb",
)
KERNEL = "ecgfm-tests"
_AUROC = r"test macro AUROC (\d\.\d+)"


def _read(name: str) -> nbformat.NotebookNode:
    return nbformat.read(NOTEBOOKS / name, as_version=4)


def _code_cells(nb: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [cell for cell in nb.cells if cell.cell_type == "code"]


@pytest.fixture(scope="session")
def kernelspec_dir(tmp_path_factory) -> pathlib.Path:
    """A Jupyter data dir whose kernel `KERNEL` runs this interpreter (`sys.executable`).

    Installed under its own name, so the notebooks run against this environment's ecgfm
    whatever other kernels the machine has.
    """
    prefix = tmp_path_factory.mktemp("jupyter")
    install_kernelspec(kernel_name=KERNEL, prefix=str(prefix))
    return prefix / "share" / "jupyter"


@pytest.fixture
def kernel_env(kernelspec_dir, monkeypatch, tmp_path):
    """The kernel inherits this environment: find `KERNEL`, and have one CPU device.

    conftest's fake devices are dropped: a notebook user (Colab, a laptop) has one. The
    notebooks' `tempfile.mkdtemp()` workdirs land in the test's own temporary folder.
    """
    monkeypatch.setenv("JUPYTER_PATH", str(kernelspec_dir))
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", os.environ["XLA_FLAGS"])
    if flags.strip():
        monkeypatch.setenv("XLA_FLAGS", flags.strip())
    else:  # XLA reads a value that is not a flag as a file name and aborts
        monkeypatch.delenv("XLA_FLAGS")


def _execute(nb: nbformat.NotebookNode, cwd: pathlib.Path) -> nbformat.NotebookNode:
    """Runs every cell in order in a fresh kernel; a cell error raises CellExecutionError."""
    client = NotebookClient(
        nb, kernel_name=KERNEL, timeout=600, resources={"metadata": {"path": str(cwd)}}
    )
    client.execute()
    return nb


def _stdout(cell: nbformat.NotebookNode) -> str:
    return "".join(o.text for o in cell.outputs if o.output_type == "stream" and o.name == "stdout")


def _cell_with(nb: nbformat.NotebookNode, text: str) -> nbformat.NotebookNode:
    (cell,) = [c for c in _code_cells(nb) if text in c.source]
    return cell


def _images(cell: nbformat.NotebookNode) -> int:
    return sum("image/png" in o.get("data", {}) for o in cell.outputs)


@pytest.mark.parametrize("name", NAMES)
def test_notebook_is_saved_without_outputs(name):
    for cell in _code_cells(_read(name)):
        assert cell.outputs == [] and cell.execution_count is None, cell.source[:80]


@pytest.mark.parametrize("name", NAMES)
def test_first_cell_installs_ecgfm_only_in_colab(name):
    first = _code_cells(_read(name))[0]
    assert 'ECGFM_PIP_SPEC = "ecgfm @ git+https://' in first.source
    assert 'if "google.colab" in sys.modules:' in first.source
    # Nothing but the install runs under that condition, so outside Colab the cell is inert.
    guarded = first.source.split('if "google.colab" in sys.modules:')[1]
    assert all(line.startswith("    ") for line in guarded.strip("\n").splitlines())


@pytest.mark.parametrize("name", NAMES)
def test_notebook_names_no_local_path(name):
    absolute = re.compile(r"""(^|[\s"'(`])/(work|home|tmp|Users|content|mnt|data)\b""", re.M)
    for cell in _read(name).cells:
        assert not absolute.search(cell.source), cell.source


@pytest.mark.parametrize(
    ("name", "parameters"),
    [
        ("quickstart.ipynb", {"ENCODER_DIR"}),
        ("transfer_ptbxl.ipynb", {"DATA_DIR", "ENCODER_DIR"}),
        ("inspect_dataset.ipynb", {"DATA_DIR"}),
        ("import_and_probe.ipynb", {"CHECKPOINT", "DATA_DIR"}),
    ],
)
def test_parameters_cell_defaults_to_synthetic_data(name, parameters):
    (cell,) = [c for c in _code_cells(_read(name)) if "parameters" in c.metadata.get("tags", [])]
    for parameter in parameters:
        assert re.search(rf"^{parameter} = None$", cell.source, re.MULTILINE), cell.source


def test_kernel_runs_this_interpreter(kernel_env, tmp_path):
    cell = nbformat.v4.new_code_cell("import sys, jax; print(sys.executable, jax.device_count())")
    nb = nbformat.v4.new_notebook(cells=[cell])
    executable, devices = _stdout(_execute(nb, tmp_path).cells[0]).split()
    assert os.path.realpath(executable) == os.path.realpath(sys.executable)
    assert devices == "1"


@pytest.mark.slow
def test_quickstart_runs_top_to_bottom(kernel_env, tmp_path):
    nb = _execute(_read("quickstart.ipynb"), tmp_path)
    num_exams = 96  # what the data cell writes
    assert f"{num_exams} exams" in _stdout(_cell_with(nb, "CodeDataset(code_dir)"))
    assert _images(_cell_with(nb, "plot_12lead(record")) == 1
    # One embedding per exam, as wide as the encoder's last stage.
    width = demo_config(tmp_path).model.hparams.widths[-1]
    embedded = _stdout(_cell_with(nb, "encoder.embed("))
    assert f"-> embeddings ({num_exams}, {width})" in embedded
    assert _images(_cell_with(nb, "np.linalg.svd")) == 1
    probe = _stdout(_cell_with(nb, "run_probe("))
    scores = dict(re.findall(rf"(\w+): {_AUROC}", probe))
    assert set(scores) == {"pretrained", "random_init"}
    assert all(0.0 <= float(s) <= 1.0 for s in scores.values())
    report = _cell_with(nb, 'WORKDIR / "probe" / "roc.png"')
    assert {"results.md", "results.json", "roc.png"} <= set(ast.literal_eval(_stdout(report)))
    assert _images(report) == 1


@pytest.mark.slow
def test_transfer_notebook_runs_the_study_on_synthetic_ptbxl(kernel_env, tmp_path):
    nb = _read("transfer_ptbxl.ipynb")
    parameters = _cell_with(nb, "LABEL_FRACTIONS = ")
    fractions = ast.literal_eval(re.search(r"LABEL_FRACTIONS = (.*)", parameters.source).group(1))
    nb = _execute(nb, tmp_path)
    summary = _stdout(_cell_with(nb, "run_probe("))
    rows = re.findall(rf"(\w+)\s+(\d+)% of the labels: {_AUROC}", summary)
    # One summary row per method and label fraction, each a valid AUROC.
    assert {(m, int(f)) for m, f, _ in rows} == {
        (m, round(100 * f)) for m in ("pretrained", "random_init") for f in fractions
    }
    assert all(0.0 <= float(a) <= 1.0 for _, _, a in rows)
    assert _images(_cell_with(nb, "label_fractions.png")) == 1
    assert _images(_cell_with(nb, '"roc.png"')) == 1
    markdown = _cell_with(nb, "results.md").outputs[0]["data"]["text/markdown"]
    assert "What pretraining added" in markdown


@pytest.mark.slow
def test_inspect_notebook_shows_splits_and_a_training_batch(kernel_env, tmp_path):
    nb = _execute(_read("inspect_dataset.ipynb"), tmp_path)
    assert "100 records of" in _stdout(_cell_with(nb, "dataset = PtbXl(DATA_DIR)"))
    assert _images(_cell_with(nb, "plot_12lead(record")) == 1
    assert _images(_cell_with(nb, "preprocessing.apply(record)")) == 1
    batch = _stdout(_cell_with(nb, "make_train_iterator("))
    # 8 records of 10 s at 100 Hz, 12 leads, as stored int16 counts; five superdiagnostic classes.
    assert "signal: (8, 1000, 12) int16" in batch and "signal_scale: (8,) float32" in batch
    assert "labels: (8, 5) float32" in batch
    assert "label_mask: (8, 5) float32" in batch


@pytest.mark.slow
def test_import_notebook_imports_checks_parity_and_probes(kernel_env, tmp_path):
    pytest.importorskip("torch")
    nb = _execute(_read("import_and_probe.ipynb"), tmp_path)
    parity = _stdout(_cell_with(nb, "max relative difference"))
    assert float(re.search(r"original: (\S+)", parity).group(1)) <= 1e-4
    card = _cell_with(nb, "import_checkpoint(FORMAT").outputs[0]["data"]["text/markdown"]
    assert "bakqui/ST-MEM" in card and "MIT" in card
    rows = re.findall(
        rf"(\w+)\s+100% of the labels: {_AUROC}", _stdout(_cell_with(nb, "run_probe("))
    )
    assert {m for m, _ in rows} == {"pretrained", "random_init"}
