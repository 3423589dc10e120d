"""The local Hub (`tests/hub_server.py`) round-trips real checkpoints and fails the way the Hub does."""

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import tiny_model
from huggingface_hub import HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    HfHubHTTPError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, LlamaForCausalLM

pytest_plugins = ["hub_server"]  # the `hub_server` fixture, also when tests/conftest.py does not load it

BASE_REPO = "test-user/tiny-llama"
ADAPTER_REPO = "test-user/tiny-llama-lora"


def _tiny_llama() -> LlamaForCausalLM:
    model = tiny_model("llama").eval()
    # What from_pretrained(BASE_REPO) would set; PEFT records it as the adapter's base model (config and card).
    model.name_or_path = model.config._name_or_path = BASE_REPO
    return model


def _folder_digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in folder.rglob("*")
        if p.is_file()
    }


@pytest.fixture
def checkpoints(tmp_path):
    """A tiny base model and a LoRA adapter on it, saved locally, with their reference logits."""
    input_ids = torch.tensor([[1, 5, 9, 13, 2, 7]])
    base = _tiny_llama()
    with torch.no_grad():
        base_logits = base(input_ids).logits
    base.save_pretrained(tmp_path / "base")
    lora = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    adapted = get_peft_model(base, lora).eval()  # B != 0, so the adapter changes the logits
    with torch.no_grad():
        adapted_logits = adapted(input_ids).logits
    assert not torch.equal(base_logits, adapted_logits)
    adapted.save_pretrained(tmp_path / "adapter")
    return {
        "input_ids": input_ids,
        "base_dir": tmp_path / "base",
        "adapter_dir": tmp_path / "adapter",
        "base_logits": base_logits,
        "adapted_logits": adapted_logits,
    }


def test_upload_then_from_pretrained_in_fresh_cache(hub_server, checkpoints, tmp_path):
    api = HfApi()
    for repo_id, folder in ((BASE_REPO, checkpoints["base_dir"]), (ADAPTER_REPO, checkpoints["adapter_dir"])):
        assert api.create_repo(repo_id).repo_id == repo_id
        api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=f"Upload {repo_id}")
        assert {s.rfilename for s in api.model_info(repo_id).siblings} == {".gitattributes", *_folder_digest(folder)}
        assert hub_server.list_commits(repo_id)[0].title == f"Upload {repo_id}"

    cache = hub_server.use_cache_dir(tmp_path / "fresh_cache")
    assert not any(cache.iterdir())
    n_requests = len(hub_server.requests)

    base = AutoModelForCausalLM.from_pretrained(BASE_REPO).eval()
    with torch.no_grad():
        assert torch.equal(base(checkpoints["input_ids"]).logits, checkpoints["base_logits"])
    adapted = PeftModel.from_pretrained(base, ADAPTER_REPO).eval()
    with torch.no_grad():
        assert torch.equal(adapted(checkpoints["input_ids"]).logits, checkpoints["adapted_logits"])

    downloaded = {r.path.rsplit("/", 1)[-1] for r in hub_server.requests[n_requests:] if r.operation == "resolve"}
    assert {"model.safetensors", "adapter_model.safetensors"} <= downloaded
    assert (cache / "models--test-user--tiny-llama").is_dir()

    snapshot = Path(snapshot_download(ADAPTER_REPO))
    assert _folder_digest(snapshot) == {
        ".gitattributes": hashlib.sha256(hub_server.repo_files(ADAPTER_REPO)[".gitattributes"]).hexdigest(),
        **_folder_digest(checkpoints["adapter_dir"]),
    }


def test_failed_commit_raises_and_leaves_local_folder_intact(hub_server, checkpoints):
    api = HfApi()
    api.create_repo(BASE_REPO)
    head_before = hub_server.list_commits(BASE_REPO)[0].sha
    folder = checkpoints["base_dir"]
    local_before = _folder_digest(folder)

    hub_server.fail_next("commit", status=500)
    with pytest.raises(HfHubHTTPError) as excinfo:
        api.upload_folder(repo_id=BASE_REPO, folder_path=folder)
    assert excinfo.value.response.status_code == 500
    assert "Injected failure" in str(excinfo.value)
    assert hub_server.operations()[-2:] == ["preupload", "commit"]  # failed midway, after the preupload step

    assert _folder_digest(folder) == local_before
    assert hub_server.list_commits(BASE_REPO)[0].sha == head_before
    assert set(hub_server.repo_files(BASE_REPO)) == {".gitattributes"}

    # The failure was one-shot: retrying the same push succeeds, and pushing it again is a no-op.
    sha = api.upload_folder(repo_id=BASE_REPO, folder_path=folder).oid
    assert hub_server.list_commits(BASE_REPO)[0].sha == sha
    assert api.upload_folder(repo_id=BASE_REPO, folder_path=folder).oid == sha
    remote = {p: hashlib.sha256(c).hexdigest() for p, c in hub_server.repo_files(BASE_REPO).items() if p[0] != "."}
    assert remote == local_before


def test_push_to_hub_from_transformers_and_peft(hub_server):
    base = _tiny_llama()
    base.push_to_hub(BASE_REPO)
    base.push_to_hub(BASE_REPO)  # repo exists and nothing changed: no error, no new commit
    assert {"config.json", "model.safetensors"} <= set(hub_server.repo_files(BASE_REPO))
    assert len(hub_server.list_commits(BASE_REPO)) == 2  # the repo's initial commit + one upload

    adapted = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False))
    adapted.push_to_hub(ADAPTER_REPO)
    config = json.loads(hub_server.repo_files(ADAPTER_REPO)["adapter_config.json"])
    assert config["base_model_name_or_path"] == BASE_REPO
    assert all(r.operation is not None for r in hub_server.requests), "client called an endpoint the server lacks"


def test_errors_map_to_client_exceptions(hub_server):
    api = HfApi()
    api.create_repo(BASE_REPO)
    api.upload_file(path_or_fileobj=b"{}", path_in_repo="config.json", repo_id=BASE_REPO)
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download(BASE_REPO, "missing.json")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("test-user/missing", "config.json")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(BASE_REPO, "config.json", revision="no-such-branch")
    with pytest.raises(HfHubHTTPError) as excinfo:
        HfApi(token=False).create_repo("test-user/other")
    assert excinfo.value.response.status_code == 401
    with pytest.raises(HfHubHTTPError) as excinfo:
        api.create_repo(BASE_REPO)
    assert excinfo.value.response.status_code == 409
    assert api.create_repo(BASE_REPO, exist_ok=True).repo_id == BASE_REPO

    sha = hub_server.list_commits(BASE_REPO)[0].sha
    assert Path(hf_hub_download(BASE_REPO, "config.json", revision=sha[:7])).read_bytes() == b"{}"
    with pytest.raises(ValueError, match="unknown"):
        hub_server.fail_next("unknown")

    hub_server.add_repo("test-user/private", {"a.txt": b"secret"}, private=True)
    assert Path(hf_hub_download("test-user/private", "a.txt")).read_bytes() == b"secret"
    with pytest.raises(RepositoryNotFoundError):
        HfApi(token=False).model_info("test-user/private")


def test_pipelined_upload_with_xet_installed(hub_server, monkeypatch, tmp_path):
    """With hf_xet enabled, upload_folder streams through preupload + commit and retries a transient failure."""
    pytest.importorskip("hf_xet")
    hub_server.configure_client(monkeypatch, tmp_path / "hf_home_xet", disable_xet=False)
    (tmp_path / "folder" / "sub").mkdir(parents=True)
    (tmp_path / "folder" / "sub" / "weights.bin").write_bytes(bytes(range(256)) * 8)
    (tmp_path / "folder" / "notes.txt").write_text("hello")
    HfApi().create_repo(BASE_REPO)
    hub_server.fail_next("commit", status=503)  # retried once by the client (about 1 s of backoff)
    HfApi().upload_folder(repo_id=BASE_REPO, folder_path=tmp_path / "folder")
    assert hub_server.operations()[-3:] == ["preupload", "commit", "commit"]
    assert hub_server.repo_files(BASE_REPO)["sub/weights.bin"] == bytes(range(256)) * 8


def test_subprocess_sees_the_server_through_env(hub_server, tmp_path):
    """In a fresh interpreter `HF_ENDPOINT` is read at import: `client_env` is all a subprocess needs."""
    HfApi().create_repo(BASE_REPO)
    HfApi().upload_file(path_or_fileobj=b"payload", path_in_repo="data/x.txt", repo_id=BASE_REPO)
    script = textwrap.dedent(
        f"""
        from huggingface_hub import hf_hub_download
        print(open(hf_hub_download({BASE_REPO!r}, "data/x.txt")).read())
        """
    )
    env = {**os.environ, **hub_server.client_env(tmp_path / "subprocess_home")}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "payload"
    assert (tmp_path / "subprocess_home" / "hub" / "models--test-user--tiny-llama").is_dir()
