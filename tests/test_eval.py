"""Evaluation on built-in data: each eval command, classify, embed; CLIP_benchmark's own code agrees with ours."""

import copy
import json

import numpy as np
import pytest
import torch

import dualtower
from dualtower.cli import main
from dualtower.data import open_source
from dualtower.eval import embed_source, retrieval, zeroshot
from dualtower.eval.retrieval import recall_at_k
from dualtower.eval.templates import HELD_OUT, templates_for
from dualtower.eval.zeroshot import scores


@pytest.fixture(scope="module")
def trained(trained_digits):
    """A small model trained briefly on the digits, so the metrics are away from chance and ties."""
    return trained_digits, dualtower.load(trained_digits)


def test_scores_by_hand():
    logits = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.1, 0.2, 0.7]])
    labels = torch.tensor([0, 1, 1, 2])
    s = scores(logits, labels, ["a", "b", "c"])
    assert s.top1 == 0.75 and s.confusion == [[1, 0, 0], [1, 1, 0], [0, 0, 1]] and s.top5 is None
    assert s.mean_per_class_recall == pytest.approx((1 + 0.5 + 1) / 3)
    assert s.to_dict() == {"top1": 0.75, "mean_per_class_recall": s.mean_per_class_recall,  # the JSON's keys
                           "per_class_recall": {"a": 1.0, "b": 0.5, "c": 1.0}, "confusion": s.confusion,
                           "classes": ["a", "b", "c"], "n": 4}


def test_recall_at_k_by_hand():
    scores_ = torch.tensor([[0.9, 0.5, 0.1], [0.2, 0.3, 0.8]])
    positives = torch.tensor([[False, True, False], [False, False, True]])
    assert recall_at_k(scores_, positives, (1, 2)) == {"R@1": 0.5, "R@2": 1.0}


def test_retrieval_says_its_rule_and_offers_the_class_level_one(trained, tmp_path, capsys):
    """Issue 33, item 4: `eval retrieval` on the built-in digits gave R@1 0.086 where the demo said 0.983 on the
    same model, without saying the two count differently. The output names its rule; `--match class` is the
    demo's (a text matches every image of the class it names) and gives the demo's kind of number."""
    path, _ = trained
    results = {}
    for match in ("caption", "class"):
        out = tmp_path / f"{match}.json"
        assert main(["eval", "retrieval", "--model", path, "--data", "builtin:digits:test", "--workers", "0",
                     "--match", match, "--out", str(out)]) == 0
        printed = capsys.readouterr().out
        results[match] = json.loads(out.read_text())
        assert results[match]["match"] == match and f"--match {match}" in printed and "rule: a text matches" in printed
    assert results["class"]["n_texts"] == 10 * len(templates_for(open_source("builtin:digits:test").name))
    assert results["class"]["image_to_text"]["R@1"] > 0.5 > results["caption"]["image_to_text"]["R@1"]
    assert main(["eval", "retrieval", "--model", path, "--data", str(tmp_path / "caption.json"), "--match",
                 "class"]) == 2


def test_eval_commands_on_builtin_data(trained, tmp_path, capsys):
    path, _ = trained
    for task, extra in (("zeroshot", []), ("retrieval", []), ("linear-probe", ["--train", "builtin:digits"])):
        out = tmp_path / f"{task}.json"
        assert main(["eval", "--device", "cpu", task, "--model", path, "--data", "builtin:digits:test", "--workers", "0",
                     "--out", str(out), *extra]) == 0
        result = json.loads(out.read_text())
        assert result["images"]["accepted"] == 360
        printed = capsys.readouterr().out
        if task == "retrieval":
            assert 0 < result["image_to_text"]["R@1"] <= result["image_to_text"]["R@5"] <= 1
            assert "image->text R@1" in printed
        else:
            assert result["top1"] > 0.5 and len(result["confusion"]) == 10 and "top-1" in printed
    assert 0.0 < json.loads((tmp_path / "linear-probe.json").read_text())["weight_decay"] <= 1.0

    # A user's own labelled folders: classes:DIR, one sub-folder per class.
    source = open_source("builtin:digits:test")
    for i in range(40):
        sample = source.load(i)
        folder = tmp_path / "mine" / source.classes[sample.label]
        folder.mkdir(parents=True, exist_ok=True)
        sample.image.save(folder / f"{i}.png")
    out = tmp_path / "mine.json"
    assert main(["eval", "--device", "cpu", "zeroshot", "--model", path, "--data", f"classes:{tmp_path / 'mine'}", "--workers", "0",
                 "--out", str(out)]) == 0
    assert json.loads(out.read_text())["n"] == 40


def test_classify_and_embed(trained, tmp_path, capsys):
    path, model = trained
    source = open_source("builtin:digits:test")
    for i in range(3):
        source.load(i).image.save(tmp_path / f"digit{i}.png")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    status = main(["classify", "--device", "cpu", "--model", path, "--labels", "zero,one,two,three,four,five,six,seven,eight,nine",
                   str(tmp_path / "digit0.png"), str(tmp_path / "bad.png"), str(tmp_path / "digit1.png")])
    captured = capsys.readouterr()
    assert status == 2 and "bad.png" in captured.err
    assert captured.out.count("digit") == 2

    for suffix in (".npz", ".safetensors"):
        out = tmp_path / f"emb{suffix}"
        assert main(["embed", "--device", "cpu", "--model", path, "--data", "builtin:digits:test", "--out", str(out), "--text",
                     "--workers", "2"]) == 0
        if suffix == ".npz":
            data = np.load(out)
            feats, ids = data["image_embeds"], list(data["ids"])
            assert data["text_embeds"].shape == feats.shape
        else:
            from safetensors import safe_open

            with safe_open(out, "pt") as f:
                feats, ids = f.get_tensor("image_embeds").numpy(), json.loads(f.metadata()["ids"])
        assert feats.shape == (360, model.cfg.embed_dim) and len(ids) == 360 and len(set(ids)) == 360
        direct, _ = embed_source(model, source, workers=0)
        assert np.allclose(feats, direct.features.numpy(), atol=1e-5)


def test_clip_benchmark_agrees_with_dualtower(trained):
    """CLIP_benchmark's own zero-shot and retrieval code, on a model from our loader, gives our numbers."""
    from clip_benchmark.metrics import zeroshot_classification, zeroshot_retrieval

    from dualtower.compat.clip_benchmark import register

    path, _ = trained
    register()
    import clip_benchmark.models as cb_models

    model, transform, tokenizer = cb_models.load_clip("dualtower", "small-digits", path, cache_dir=None,
                                                      device="cpu")
    source = open_source("builtin:digits:test")
    templates = HELD_OUT["digits"]

    class Classes(torch.utils.data.Dataset):
        classes = source.classes

        def __len__(self):
            return len(source)

        def __getitem__(self, i):
            s = source.load(i)
            return transform(s.image), s.label

    theirs = zeroshot_classification.evaluate(model, torch.utils.data.DataLoader(Classes(), batch_size=50),
                                              tokenizer, source.classes, templates, "cpu", amp=False)
    images, _ = embed_source(model, source, workers=0)
    ours = zeroshot(model, images, source.classes, templates)
    assert theirs["acc1"] == pytest.approx(ours.top1, abs=1e-9)
    assert theirs["acc5"] == pytest.approx(ours.top5, abs=1e-9)
    assert theirs["mean_per_class_recall"] == pytest.approx(ours.mean_per_class_recall, abs=1e-9)

    # Retrieval with unique captions (COCO-style): two captions per image naming the image's own id.
    class Captions(torch.utils.data.Dataset):
        def __len__(self):
            return len(source)

        def captions(self, i):
            s = source.load(i)
            name = source.classes[s.label]
            return [f"{templates[0].format(c=name)}, image {s.id}", f"{templates[1].format(c=name)} no. {s.id}"]

        def __getitem__(self, i):
            return transform(source.load(i).image), self.captions(i)

    dataset = Captions()
    loader = torch.utils.data.DataLoader(dataset, batch_size=64, collate_fn=lambda b: (
        torch.stack([x for x, _ in b]), [c for _, c in b]))
    theirs = zeroshot_retrieval.evaluate(model, loader, tokenizer, "cpu", amp=False, recall_k_list=[1, 5, 10])
    expanded = images.__class__(
        features=images.features.repeat_interleave(2, dim=0), labels=images.labels.repeat_interleave(2),
        ids=[i for i in images.ids for _ in range(2)],
        captions=[c for i in range(len(source)) for c in dataset.captions(i)],
        image_keys=[k for k in images.image_keys for _ in range(2)])
    ours = retrieval(model, expanded)
    n_images, n_texts = ours.n_images, ours.n_texts
    assert (n_images, n_texts) == (360, 720)
    for k in (1, 5, 10):  # CLIP_benchmark averages in float32: compare the counts of hits
        assert round(theirs[f"text_retrieval_recall@{k}"] * n_images) == round(ours.image_to_text[f"R@{k}"] * n_images)
        assert round(theirs[f"image_retrieval_recall@{k}"] * n_texts) == round(ours.text_to_image[f"R@{k}"] * n_texts)


def test_clip_benchmark_command_line_evaluates_a_dualtower_checkpoint(trained, tmp_path):
    """CLIP_benchmark's real command line (`clip_benchmark.cli.main`, run as a process) with model type
    "dualtower", on the held-out digits written as a local WebDataset; its top-1 equals ours."""
    import io
    import subprocess
    import sys
    import tarfile

    path, model = trained
    source = open_source("builtin:digits:test")
    templates = HELD_OUT["digits"]
    root = tmp_path / "wds"
    (root / "test").mkdir(parents=True)
    (root / "test" / "nshards.txt").write_text("1\n")
    (root / "classnames.txt").write_text("\n".join(source.classes) + "\n")
    (root / "zeroshot_classification_templates.txt").write_text("\n".join(templates) + "\n")
    with tarfile.open(root / "test" / "0.tar", "w") as tar:
        for i in range(len(source)):
            s = source.load(i)
            png = io.BytesIO()
            s.image.save(png, format="PNG")
            for ext, data in (("png", png.getvalue()), ("cls", str(s.label).encode())):
                info = tarfile.TarInfo(f"{i:06d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    out = tmp_path / "result.json"
    subprocess.run([sys.executable, "-m", "dualtower.compat.clip_benchmark", "eval", "--model_type", "dualtower",
                    "--model", model.cfg.name, "--pretrained", str(path), "--dataset", "wds/digits",
                    "--dataset_root", str(root), "--task", "zeroshot_classification", "--no_amp",
                    "--num_workers", "0", "--batch_size", "64", "--output", str(out), "--quiet"],
                   check=True, cwd=tmp_path)
    theirs = json.loads(out.read_text())["metrics"]
    images, _ = embed_source(model, source, workers=0)
    ours = zeroshot(model, images, source.classes, templates)
    assert theirs["acc1"] == pytest.approx(ours.top1, abs=1e-9)
    assert theirs["mean_per_class_recall"] == pytest.approx(ours.mean_per_class_recall, abs=1e-9)


def test_length_batches_respect_rows_and_token_budget():
    from dualtower.eval.embed import length_batches

    lengths = torch.tensor([77, 5, 12, 30, 9, 9, 60, 3] * 20)
    batches = length_batches(lengths, batch_size=32, token_budget=256)
    seen = torch.cat(batches)
    assert sorted(seen.tolist()) == list(range(len(lengths)))  # every text once
    for b in batches:
        assert len(b) <= 32 and len(b) * int(lengths[b].max()) <= max(256, int(lengths[b].max()))


def test_embed_texts_equals_one_plain_batch():
    import dualtower
    from dualtower.eval.embed import embed_texts

    model = dualtower.create_model("tiny", seed=0).eval()
    texts = [("a photo of " + "many " * (i % 13) + f"thing {i}") for i in range(70)] + ["x " * 40]
    ids = dualtower.get_tokenizer(model)(texts)
    with torch.no_grad():
        want = model.encode_text(ids, normalize=True)
    got = embed_texts(model, texts, batch_size=16, token_budget=64)
    assert float((got - want).abs().max()) <= 1e-5


def test_bf16_precision_agrees_with_fp32(trained, tmp_path, capsys):
    """--precision bf16 holds the weights in bfloat16 (norms still in fp32): embeddings within cosine 0.999."""
    path, model = trained
    out = tmp_path / "bf16.npz"
    assert main(["embed", "--device", "cpu", "--model", path, "--data", "builtin:digits:test", "--out", str(out), "--text",
                 "--workers", "0", "--precision", "bf16"]) == 0
    data = np.load(out)
    direct, texts = embed_source(model, open_source("builtin:digits:test"), workers=0, with_text=True)
    for got, want in ((data["image_embeds"], direct.features), (data["text_embeds"], texts)):
        cos = torch.nn.functional.cosine_similarity(torch.from_numpy(got).float(), want, dim=-1)
        assert float(cos.min()) >= 0.999
    source = open_source("builtin:digits:test")
    source.load(0).image.save(tmp_path / "digit0.png")
    assert main(["classify", "--device", "cpu", "--model", path, "--precision", "bf16", "--labels", "zero,one,two",
                 str(tmp_path / "digit0.png")]) == 0
    assert "digit0.png:" in capsys.readouterr().out


def test_embed_a_folder_of_images_without_captions(trained, tmp_path, capsys):
    path, _ = trained
    source = open_source("builtin:digits:test")
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        source.load(i).image.save(folder / f"img{i}.png")
    out = tmp_path / "emb.npz"
    assert main(["embed", "--device", "cpu", "--model", path, "--data", str(folder), "--out", str(out), "--workers", "0"]) == 0
    assert np.load(out)["image_embeds"].shape[0] == 3
    # With --text the captions are needed: each image without one is skipped and counted, and an output with no
    # rows is an error (issue 18), leaving the earlier file in place.
    capsys.readouterr()
    assert main(["embed", "--device", "cpu", "--model", path, "--data", str(folder), "--out", str(out), "--text",
                 "--workers", "0"]) == 2
    assert "3 missing caption" in capsys.readouterr().err
    assert np.load(out)["image_embeds"].shape[0] == 3


def test_device_option(trained, tmp_path, capsys):
    """--device: an explicit cpu gives the same embeddings; a device this torch lacks is refused by name."""
    path, model = trained
    out = tmp_path / "cpu.npz"
    assert main(["embed", "--model", path, "--data", "builtin:digits:test", "--out", str(out), "--workers", "0",
                 "--device", "cpu"]) == 0
    direct, _ = embed_source(model, open_source("builtin:digits:test"), workers=0)
    assert np.abs(np.load(out)["image_embeds"] - direct.features.numpy()).max() <= 1e-6
    for bad, says in (("tpu", "not a device name"), ("mps", "only cpu and cuda"),
                      ("cuda:7", "CUDA GPU")):
        assert main(["embed", "--model", path, "--data", "builtin:digits:test", "--out", str(out),
                     "--device", bad]) == 2
        assert says in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_embed_and_classify_on_cuda_match_cpu(trained, tmp_path, capsys):
    path, model = trained
    out = tmp_path / "cuda.npz"
    assert main(["embed", "--model", path, "--data", "builtin:digits:test", "--out", str(out), "--text",
                 "--workers", "0", "--device", "cuda"]) == 0
    direct, texts = embed_source(model, open_source("builtin:digits:test"), workers=0, with_text=True)
    data = np.load(out)
    assert np.abs(data["image_embeds"] - direct.features.numpy()).max() <= 1e-4  # TF32 may be on
    assert np.abs(data["text_embeds"] - texts.numpy()).max() <= 1e-4
    open_source("builtin:digits:test").load(0).image.save(tmp_path / "digit0.png")
    assert main(["classify", "--model", path, "--device", "cuda", "--labels", "zero,one,two",
                 str(tmp_path / "digit0.png")]) == 0
    assert "digit0.png:" in capsys.readouterr().out
    # Token ids may stay on the CPU for a tower on the GPU: the same embeddings as ids moved by hand.
    ids = dualtower.get_tokenizer(model)(["a photo of a seven", "a handwritten digit zero on a white card"])
    on_gpu = copy.deepcopy(model).to("cuda")
    with torch.no_grad():
        assert torch.equal(on_gpu.encode_text(ids), on_gpu.encode_text(ids.cuda()))
