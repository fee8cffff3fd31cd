"""Files other people made run no code here: sharded (torch.distributed.checkpoint) folders, torch.export folders,
and an index that names files outside its folders. Each test here failed before its fix."""

import builtins
import os
import pickle
import shutil
import warnings
from pathlib import Path

import pytest
import torch

import dualtower
from dualtower.checkpoint import CheckpointError
from dualtower.cli import main
from dualtower.sharded import ShardedCheckpointError


def _errors_in_one_line(capsys, rc, *needles):
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("note:")]
    assert rc == 2, err
    assert "Traceback" not in err and len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


# ------------------------------------------------------------------------- sharded checkpoints run no code

@pytest.fixture(scope="module")
def sharded_run(tmp_path_factory):
    """A training run whose latest checkpoint is sharded (written by the FSDP path's writer in one process), and
    a copy whose sharded folder has the index an older dualtower wrote (torch's pickled `.metadata`)."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    from dualtower.sharded import dcp_save
    from dualtower.train.optim import param_groups
    from dualtower.train.state import TRAIN_STATE

    root = tmp_path_factory.mktemp("sharded")
    assert main(["train", "--train.steps=2", "--data.batch_size=16", "--model.arch=tiny", "--data.workers=0",
                 "--train.progress=false", f"--train.out={root / 'run'}"]) == 0
    step = next((root / "run" / "checkpoints").glob("step_*"))
    model = dualtower.load(step)
    optimizer = torch.optim.AdamW(param_groups(model, 0.1))
    state = torch.load(step / TRAIN_STATE, weights_only=True)
    optimizer.load_state_dict(state.pop("optimizer"))
    torch.save(state, step / TRAIN_STATE)
    model_state, optim_state = get_state_dict(model, optimizer)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        dcp_save({"model": model_state, "optim": optim_state}, step / "sharded")
    (step / "model.safetensors").unlink()
    legacy = root / "legacy"
    shutil.copytree(root / "run", legacy, symlinks=True)
    import torch.distributed.checkpoint as dcp

    legacy_step = legacy / "checkpoints" / step.name
    shutil.rmtree(legacy_step / "sharded")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(legacy_step / "sharded"))
    return {"run": root / "run", "step": step, "legacy": legacy, "legacy_step": legacy_step, "model": model}


def _same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_a_sharded_checkpoint_is_written_without_pickle_and_older_ones_still_load(sharded_run):
    folder = sharded_run["step"] / "sharded"
    assert sorted(p.name for p in folder.iterdir()) == ["__0_0.distcp", "metadata.json"]
    assert _same_weights(dualtower.load(sharded_run["run"]), sharded_run["model"])
    assert (sharded_run["legacy_step"] / "sharded" / ".metadata").is_file()
    assert _same_weights(dualtower.load(sharded_run["legacy"]), sharded_run["model"])


def _hostile_index(real: bytes, marker: Path) -> dict[str, bytes]:
    """Pickled `.metadata` files that `touch marker` when unpickled; the last returns the real metadata after
    its payload, so a plain unpickler would leave no trace."""

    class System:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    class Stealth:
        def __reduce__(self):
            return builtins.eval, (f"__import__('os').system('touch {marker}') or __import__('pickle').loads({real!r})",)

    return {"system": pickle.dumps(System()), "stealth": pickle.dumps(Stealth())}


def _entry_points(run: Path, tmp: Path, photo_dir: Path) -> dict:
    """Every command that takes a checkpoint, given `run`."""
    return {
        "load": lambda: dualtower.load(run),
        "convert": lambda: main(["convert", str(run), str(tmp / "converted")]),
        "resume": lambda: main(["train", f"--resume={run}"]),
        "init": lambda: main(["train", "--train.steps=1", "--data.batch_size=8", "--data.workers=0",
                              f"--model.init={run}", "--train.progress=false", f"--train.out={tmp / 'ft'}"]),
        "embed": lambda: main(["embed", "--model", str(run), "--data", str(photo_dir), "--out",
                               str(tmp / "e.npz"), "--workers", "0"]),
        "classify": lambda: main(["classify", "--model", str(run), "--labels", "a,b", str(photo_dir)]),
        "index": lambda: main(["index", "--model", str(run), "--out", str(tmp / "idx2"), "--workers", "0",
                               str(photo_dir)]),
    }


@pytest.mark.parametrize("payload", ["system", "stealth"])
def test_a_hostile_sharded_index_runs_no_code_through_any_entry_point(sharded_run, tmp_path, capsys, photos,
                                                                       payload):
    run = tmp_path / "run"
    shutil.copytree(sharded_run["legacy"], run, symlinks=True)
    step = run / "checkpoints" / sharded_run["step"].name
    photo_dir = tmp_path / "photos"
    photo_dir.mkdir()
    photos["coffee"].save(photo_dir / "coffee.png")
    # an index built while the run was sound, so `search` reopens the model by this run's path
    assert main(["index", "--model", str(run), "--out", str(tmp_path / "idx"), "--workers", "0",
                 str(photo_dir)]) == 0
    marker = tmp_path / "pwned"
    index_file = step / "sharded" / ".metadata"
    index_file.write_bytes(_hostile_index(index_file.read_bytes(), marker)[payload])
    capsys.readouterr()
    calls = _entry_points(run, tmp_path, photo_dir)
    calls["search"] = lambda: main(["search", str(tmp_path / "idx"), "a cup"])
    for name, call in calls.items():
        if name == "load":
            with pytest.raises(CheckpointError, match=r"\.metadata: refused: .* is not part of a checkpoint's index"):
                call()
        else:
            _errors_in_one_line(capsys, call(), "refused", ".metadata")
        assert not marker.exists(), f"{name} ran the payload"


def test_hostile_json_indexes_and_data_entries_are_refused(sharded_run, tmp_path):
    """The JSON index builds only DCP's record types and names only files in its folder; an entry of the data
    file that holds an object (not plain data) is refused when read."""
    import json

    run = tmp_path / "run"
    shutil.copytree(sharded_run["run"], run, symlinks=True)
    folder = run / "checkpoints" / sharded_run["step"].name / "sharded"
    good = json.loads((folder / "metadata.json").read_text())
    cases = {
        "unknown record type 'Popen'": {**good, "$": "Popen"},
        "not a torch dtype": json.loads(json.dumps(good).replace('"float32"', '"_C"', 1)),
        "outside its folder": json.loads(json.dumps(good).replace('"__0_0.distcp"', '"../../../etc/passwd"', 1)),
    }
    for message, index in cases.items():
        (folder / "metadata.json").write_text(json.dumps(index))
        with pytest.raises(CheckpointError, match=message):
            dualtower.load(run)
    (folder / "metadata.json").write_text(json.dumps(good))

    # a non-tensor entry (an optimizer hyper-parameter) replaced in place by a pickled object of the same length
    marker = tmp_path / "pwned"
    from dualtower.sharded import read_index

    info = next(v for k, v in read_index(folder).storage_data.items() if k.fqn == "optim.param_groups.0.lr")

    class System:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    import io

    buffer = io.BytesIO()
    torch.save(System(), buffer)
    data = bytearray((folder / info.relative_path).read_bytes())
    payload = buffer.getvalue()
    with open(folder / info.relative_path, "wb") as f:
        f.write(bytes(data[:info.offset]) + payload + bytes(data[info.offset + info.length:]))
    entries = {k: v for k, v in read_index(folder).storage_data.items()}
    for k, v in entries.items():  # the index follows the new lengths
        if v.offset > info.offset:
            v.offset += len(payload) - info.length
    entries[next(k for k in entries if k.fqn == "optim.param_groups.0.lr")].length = len(payload)
    from dualtower.sharded import _encode

    metadata = read_index(folder)
    metadata.storage_data = entries
    (folder / "metadata.json").write_text(json.dumps(_encode(metadata)))
    model = dualtower.create_model("tiny")
    from dualtower.train.state import load_sharded

    with pytest.raises(ShardedCheckpointError, match="refused: entry .optim.param_groups.0.lr. is not plain data .*unsupported GLOBAL posix.system"):
        load_sharded(run / "checkpoints" / sharded_run["step"].name, model, torch.optim.AdamW(model.parameters()))
    assert not marker.exists()

    # a damaged data file: one clear error, not DCP's traceback
    (folder / info.relative_path).write_bytes(b"\0" * 64)
    with pytest.raises(CheckpointError, match="not a readable sharded checkpoint"):
        dualtower.load(run)


# ------------------------------------------------------------------------------- torch.export folders run no code

def _rewrite_zip(path: Path, change) -> None:
    """Rewrite the zip archive `path`, `change(members)` editing its {name: bytes} in place."""
    import zipfile

    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    change(members)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for name, data in members.items():
            z.writestr(name, data)


def _pickled(obj) -> bytes:
    import io

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def test_a_torch_export_folder_holding_pickled_payloads_is_refused(tmp_path):
    import json

    from dualtower.export import export, load_programs

    marker = tmp_path / "pwned"

    class System:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    model = dualtower.create_model("tiny", seed=1)
    export(model, tmp_path / "good", format="torch-export")
    ids = dualtower.get_tokenizer(model)(["a photo"])
    with torch.no_grad():
        got, ref = load_programs(tmp_path / "good")["text"](ids), model.encode_text(ids)
        assert (got - ref).abs().max() <= 1e-5 * ref.abs().max()  # the eager tower trims the padding first

    def root(members):
        return next(iter(members)).split("/", 1)[0]

    def pickled_weight(members):  # a weight marked use_pickle, its file a pickle
        r = root(members)
        name = f"{r}/data/weights/model_weights_config.json"
        config = json.loads(members[name])
        entry = next(iter(config["config"].values()))
        entry["use_pickle"] = True
        members[f"{r}/data/weights/{entry['path_name']}"] = _pickled(System())
        members[name] = json.dumps(config).encode()

    def legacy_weights(members):  # the weights as one legacy torch file
        members[f"{root(members)}/data/weights/model.pt"] = _pickled({"w": System()})

    def sample_inputs(members):  # sample inputs torch would load with weights_only=False after the safe loader fails
        r = root(members)
        name = next(n for n in members if n.startswith(f"{r}/data/sample_inputs/"))
        members[name] = _pickled(((System(),), {}))

    def opaque_constant(members):  # a constant stored as a pickled custom object
        r = root(members)
        name = f"{r}/data/constants/model_constants_config.json"
        config = json.loads(members[name])
        config["config"]["evil"] = {"path_name": "opaque_obj_0", "is_param": False, "use_pickle": True}
        members[name] = json.dumps(config).encode()
        members[f"{r}/data/constants/opaque_obj_0"] = pickle.dumps(System())

    for case, change in {"pickled weight": pickled_weight, "legacy weights": legacy_weights,
                         "sample inputs": sample_inputs, "custom object": opaque_constant}.items():
        folder = tmp_path / case.replace(" ", "-")
        shutil.copytree(tmp_path / "good", folder)
        _rewrite_zip(folder / "text.pt2", change)
        with pytest.raises(ValueError, match=r"text\.pt2: refused: .*a torch-export folder is a program"):
            load_programs(folder)
        assert not marker.exists(), case
    # what the check stands between: torch itself runs the first kind
    try:
        torch.export.load(tmp_path / "pickled-weight" / "text.pt2")
    except Exception:
        pass
    assert marker.exists()

    # a config naming a file outside its folder
    config = json.loads((tmp_path / "good" / "config.json").read_text())
    config["graphs"]["text"]["file"] = "../pickled-weight/text.pt2"
    (tmp_path / "good" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="not a file of its folder"):
        load_programs(tmp_path / "good")
