"""The zero-shot command on real photographs (scikit-image's), with an imported and a trained CLIP."""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from mmjax.zero_shot import check_labels, check_templates, evaluate_source, load_classifier

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera")
LABELS = ["an astronaut", "a cup of coffee", "a cat", "a rocket", "a photographer"]
TEMPLATES = ["a photo of {}.", "a picture of {}."]


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory):
    """Five photographs that ship inside scikit-image, written as PNG and JPEG files."""
    data = pytest.importorskip("skimage.data")
    folder = tmp_path_factory.mktemp("photos")
    for i, name in enumerate(PHOTOS):
        Image.fromarray(getattr(data, name)()).save(folder / f"{name}.{'png' if i % 2 else 'jpg'}")
    (folder / "notes.txt").write_text("not an image")
    return str(folder)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mmjax.zero_shot", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=300)


@pytest.fixture(scope="module")
def open_clip_checkpoint(tmp_path_factory):
    """A randomly initialised open_clip CLIP with OpenAI's 49,408-token vocabulary, saved as a
    published open_clip folder: weights, open_clip_config.json and the BPE merges file."""
    pytest.importorskip("tokenizers")
    open_clip = pytest.importorskip("open_clip")
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("open_clip")
    model_cfg = dict(embed_dim=32, quick_gelu=True,
                     vision_cfg=dict(layers=2, width=64, head_width=32, patch_size=16, image_size=64),
                     text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=2))
    torch.manual_seed(0)
    model = open_clip.model.CLIP(**model_cfg).eval()
    save_file(model.state_dict(), str(folder / "open_clip_model.safetensors"))
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": {}}))
    with open(open_clip.tokenizer.default_bpe(), "rb") as src:
        (folder / "bpe_simple_vocab_16e6.txt.gz").write_bytes(src.read())
    return str(folder), model


def open_clip_probabilities(model, image_paths, labels, templates):
    """The same zero-shot pipeline written with open_clip's own preprocessing and tokenizer."""
    import open_clip
    import torch

    preprocess = open_clip.transform.image_transform(64, is_train=False)
    tokenizer = open_clip.tokenizer.SimpleTokenizer()
    with torch.no_grad():
        images = torch.stack([preprocess(Image.open(p)) for p in image_paths])
        image_features = model.encode_image(images, normalize=True)
        classes = []
        for label in labels:
            prompts = model.encode_text(tokenizer([t.format(label) for t in templates]), normalize=True)
            mean = prompts.mean(dim=0)
            classes.append(mean / mean.norm())
        logits = model.logit_scale.exp() * image_features @ torch.stack(classes).T
        return logits.softmax(dim=-1).numpy()


def test_cli_on_photographs_with_open_clip_weights_matches_open_clip(photo_dir, open_clip_checkpoint, tmp_path):
    folder, model = open_clip_checkpoint
    output = tmp_path / "results.json"
    args = ["--checkpoint", folder, "--images", photo_dir, "--labels", ",".join(LABELS), "--top_k", "3",
            "--output", str(output)] + [f"--template={t}" for t in TEMPLATES]
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(output.read_text())
    assert [os.path.basename(r["image"]).split(".")[0] for r in results] == sorted(PHOTOS)
    for result in results:
        probabilities = [p for _, p in result["top"]]
        assert len(probabilities) == 3 and probabilities == sorted(probabilities, reverse=True)
        assert os.path.basename(result["image"]) in proc.stdout
        assert f"{probabilities[0]:7.4f}  {result['top'][0][0]}" in proc.stdout

    # Decode, resize, normalise, tokenise, embed and rank as open_clip does it.
    expected = open_clip_probabilities(model, [r["image"] for r in results], LABELS, TEMPLATES)
    for result, row in zip(results, expected):
        order = np.argsort(-row, kind="stable")[:3]
        assert [label for label, _ in result["top"]] == [LABELS[i] for i in order]
        np.testing.assert_allclose([p for _, p in result["top"]], row[order], rtol=1e-4, atol=1e-6)


TINY_CONFIG = '''
from configs.clip_tiny import get_config as clip_tiny


def get_config():
    config = clip_tiny()
    config.data.data_dir = {data_dir!r}
    config.data.num_train, config.data.num_validation = 64, 8
    config.data.num_test, config.data.num_compositional_test = 24, 8
    config.data.vocab_size = config.model.text.vocab_size = 128
    config.model.image.update(width=32, depth=1, num_heads=2, mlp_dim=64)
    config.model.text.update(width=32, depth=1, num_heads=2, mlp_dim=64)
    config.model.embed_dim = 32
    config.batch_size = 16
    config.num_steps = 4
    config.optimizer.warmup_steps = 2
    config.mesh.data = 1  # one device: the step compiles in a third of the time of eight
    return config
'''


def test_cli_on_photographs_with_an_mmjax_trained_checkpoint(photo_dir, tmp_path):
    from mmjax.training.loop import train_and_evaluate

    config_path = tmp_path / "tiny_config.py"
    config_path.write_text(TINY_CONFIG.format(data_dir=str(tmp_path / "data")))
    spec = importlib.util.spec_from_file_location("tiny_config", config_path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    workdir = str(tmp_path / "run")
    train_and_evaluate(module.get_config(), workdir, stop_after=2)

    labels = tmp_path / "labels.txt"
    labels.write_text("red circle\nblue square\n\ngreen triangle\n")
    proc = run_cli("--checkpoint", workdir, "--config", str(config_path), "--images", photo_dir,
                   "--labels_file", str(labels), "--top_k", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    for name in PHOTOS:
        heading = next(i for i, line in enumerate(lines) if line.startswith(name + "."))
        rows = [line.split(maxsplit=1) for line in lines[heading + 1: heading + 3]]
        assert all(label in ("red circle", "blue square", "green triangle") for _, label in rows)
        assert 1.0 >= float(rows[0][0]) >= float(rows[1][0]) >= 0.0

    # The run folder without its config is refused with what to do.
    with pytest.raises(ValueError, match="pass --config, the config file it was trained with"):
        load_classifier(workdir)


def test_accuracy_over_a_labelled_source_counts_the_top_ranked_label(photo_dir, open_clip_checkpoint):
    from mmjax.zero_shot import classify, embed_images, label_embeddings
    from mmjax.interop.preprocess import load_image

    classifier = load_classifier(open_clip_checkpoint[0])
    names = sorted(PHOTOS)
    paths = sorted(os.path.join(photo_dir, n) for n in os.listdir(photo_dir) if not n.endswith(".txt"))
    images = [load_image(p) for p in paths]
    source = [{"image": np.asarray(image.convert("RGB")), "label": i} for i, image in enumerate(images)]
    results = evaluate_source(classifier, source, names, TEMPLATES, batch_size=2, num_threads=1)
    probabilities = classify(classifier, embed_images(classifier, [Image.fromarray(s["image"]) for s in source]),
                             label_embeddings(classifier, names, TEMPLATES))
    assert results["top1"] == pytest.approx(np.mean(probabilities.argmax(axis=1) == np.arange(5)))
    assert results["top5"] == 1.0  # five classes


def test_bad_labels_and_templates_are_named():
    with pytest.raises(ValueError, match="at least two non-empty labels"):
        check_labels(["cat"])
    with pytest.raises(ValueError, match="labels must be distinct; repeated: \\['cat'\\]"):
        check_labels(["cat", "dog", " cat"])
    with pytest.raises(ValueError, match="exactly one '\\{\\}'"):
        check_templates(["a photo of a cat"])


def test_unreadable_files_in_the_folder_are_skipped_with_a_warning_and_a_count(photo_dir, open_clip_checkpoint,
                                                                               tmp_path, capsys):
    from mmjax.zero_shot import classify_folder

    folder = tmp_path / "mixed"
    folder.mkdir()
    for name in ("chelsea.jpg", "coffee.png"):
        (folder / name).write_bytes(open(os.path.join(photo_dir, name), "rb").read())
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg" * 20)
    (folder / "empty.png").write_bytes(b"")
    results = classify_folder(load_classifier(open_clip_checkpoint[0]), str(folder), LABELS, TEMPLATES, top_k=2)
    assert [os.path.basename(r["image"]) for r in results] == ["chelsea.jpg", "coffee.png"]
    err = capsys.readouterr().err
    assert "broken.jpg" in err and "empty.png" in err
    assert f"skipped 2 unreadable file(s) of 4 in {folder}" in err


def test_a_tfds_classification_set_through_the_zero_shot_evaluator(open_clip_checkpoint, tmp_path):
    """cifar10 on TFDS's mock data: its class names, CLIP's 18 templates, and top-1 as counted by hand."""
    import tensorflow_datasets as tfds

    from mmjax.data.tfds_sources import classification_set
    from mmjax.zero_shot import classify, embed_images, label_embeddings

    classifier = load_classifier(open_clip_checkpoint[0])
    with tfds.testing.mock_data(num_examples=12, data_dir=str(tmp_path)):
        source, names, templates = classification_set("cifar10", "test", str(tmp_path))
        examples = [source[i] for i in range(len(source))]
        results = evaluate_source(classifier, source, names, templates, batch_size=5, num_threads=1)
    assert names[:3] == ["airplane", "automobile", "bird"] and len(templates) == 18
    probabilities = classify(classifier, embed_images(classifier, [Image.fromarray(e["image"]) for e in examples]),
                             label_embeddings(classifier, names, templates))
    labels = np.array([e["label"] for e in examples])
    assert results["top1"] == pytest.approx(np.mean(probabilities.argmax(axis=1) == labels))
    top5 = np.argsort(-probabilities, axis=1)[:, :5]
    assert results["top5"] == pytest.approx(np.mean([label in row for label, row in zip(labels, top5)]))
