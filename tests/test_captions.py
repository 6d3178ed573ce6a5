"""WebVid caption lookup and the BLIP-2 captioner (weights-missing error, real offline code path)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from ic_data.captions import Blip2Captioner, caption_for, load_webvid_captions
from ic_data.errors import MissingWeightsError

WEBVID_CSV = """videoid,contentUrl,duration,page_dir,name
1066678825,https://example.invalid/1.mp4,PT00H00M12S,011201_011250,"Aerial shot of a winding road, autumn forest"
21179416,https://example.invalid/2.mp4,PT00H00M29S,006001_006050,Woman smiling at camera
"""


def test_webvid_captions_match_by_file_stem(tmp_path):
    csv_path = tmp_path / "results_2M_val.csv"
    csv_path.write_text(WEBVID_CSV, encoding="utf-8")
    captions = load_webvid_captions(csv_path)
    assert captions == {
        "1066678825": "Aerial shot of a winding road, autumn forest",
        "21179416": "Woman smiling at camera",
    }
    assert caption_for("/data/webvid/011201_011250/1066678825.mp4", captions) == (
        "Aerial shot of a winding road, autumn forest"
    )
    assert caption_for("21179416.webm", captions) == "Woman smiling at camera"
    assert caption_for("/data/999.mp4", captions) is None


def test_only_the_selected_captions_are_kept(tmp_path):
    csv_path = tmp_path / "results_2M_val.csv"
    csv_path.write_text(WEBVID_CSV, encoding="utf-8")
    assert load_webvid_captions(csv_path, only={"21179416", "404"}) == {"21179416": "Woman smiling at camera"}
    assert load_webvid_captions(csv_path, only=set()) == {}


def test_curated_shards_carry_the_csv_caption_of_their_video(two_shot_video, tmp_path):
    """Curation reads the CSV once, for the videos it curates, and each clip's shard sample and
    manifest row carry its video's caption (none for a video the CSV does not name)."""
    import shutil

    from ic_data.manifest import read_manifest
    from ic_data.pipeline import CurationConfig, curate, discover_videos, plan_chunks
    from ic_data.shards import iter_shards, shard_paths

    videos = tmp_path / "videos"
    (videos / "011201_011250").mkdir(parents=True)
    shutil.copy(two_shot_video[0], videos / "011201_011250" / "1066678825.mp4")
    shutil.copy(two_shot_video[0], videos / "999.mp4")
    csv_path = tmp_path / "captions.csv"
    csv_path.write_text(WEBVID_CSV, encoding="utf-8")
    config = CurationConfig(captions_csv=str(csv_path), drop_fraction=0.0)
    # Each chunk task carries the captions of its own videos, so no worker reads the CSV.
    chunks = plan_chunks(discover_videos(videos), config, chunk_size=1)
    assert [[(Path(p).stem, dict(c.captions).get(v)) for v, p in c.videos] for c in chunks] == [
        [("1066678825", "Aerial shot of a winding road, autumn forest")], [("999", None)]]
    said = []
    summary = curate(videos, tmp_path / "out", config, chunk_size=1, progress=said.append)
    rows = {Path(r.path).stem: r for r in read_manifest(tmp_path / "out" / "manifest.parquet")}
    assert {k: (r.status, r.caption) for k, r in rows.items()} == {
        "1066678825": ("ok", "Aerial shot of a winding road, autumn forest"), "999": ("ok", "")}
    # The video the CSV does not name is said once, and counted (it used to pass in silence).
    assert f"1 of 2 videos have no row in {csv_path} (their clips get an empty caption): 999-" in "\n".join(said)
    assert summary.uncaptioned == 1
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["uncaptioned"] == 1
    samples = {s.meta["source_path"].rsplit("/", 1)[-1]: s.caption
               for s in iter_shards(shard_paths(str(tmp_path / "out" / "shards")))}
    assert samples == {"1066678825.mp4": "Aerial shot of a winding road, autumn forest", "999.mp4": ""}


def test_webvid_csv_missing_columns_are_named(tmp_path):
    csv_path = tmp_path / "bad.csv"
    csv_path.write_text("id,contentUrl,title\n1,u,t\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"videoid.*name"):
        load_webvid_captions(csv_path)


def test_blip2_without_weights_names_the_setting(monkeypatch, tmp_path):
    monkeypatch.delenv("IC_BLIP2_PATH", raising=False)
    with pytest.raises(MissingWeightsError, match="IC_BLIP2_PATH"):
        Blip2Captioner()
    monkeypatch.setenv("IC_BLIP2_PATH", str(tmp_path / "absent"))
    with pytest.raises(MissingWeightsError, match="IC_BLIP2_PATH.*blip2-opt-2.7b"):
        Blip2Captioner()


def test_caption_describes_evenly_spaced_frames_and_joins_distinct(tmp_path, monkeypatch):
    captioner = Blip2Captioner(str(tmp_path), frames_per_clip=3)  # describe() is replaced below
    seen: list[list[int]] = []

    def fake_describe(images):
        indices = [int(image[0, 0, 0]) for image in images]
        seen.append(indices)
        return ["a dog runs" if i < 20 else "a dog sits" for i in indices]

    monkeypatch.setattr(captioner, "describe", fake_describe)
    frames = np.arange(32, dtype=np.uint8)[:, None, None, None] * np.ones((1, 8, 8, 3), np.uint8)
    assert captioner.caption(frames) == "a dog runs; a dog sits"
    assert seen == [[0, 16, 31]]
    with pytest.raises(ValueError):
        captioner.caption(frames.astype(np.float32))


# ---------------------------------------------------------------- tiny random BLIP-2, offline


def _byte_level_alphabet() -> list[str]:
    """The 256 printable stand-ins GPT-2's byte-level BPE uses for raw bytes."""
    printable = [b for b in range(256) if 33 <= b <= 126 or 161 <= b <= 172 or 174 <= b <= 255]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(256 - len(printable))]


@pytest.fixture(scope="module")
def tiny_blip2_dir(tmp_path_factory):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    out = tmp_path_factory.mktemp("tiny_blip2")

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for char in _byte_level_alphabet():
        vocab.setdefault(char, len(vocab))
    merges = ["Ġ a", "Ġ t", "h e"]
    for merge in merges:
        vocab["".join(merge.split())] = len(vocab)
    (out / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    tokenizer = transformers.GPT2Tokenizer(
        str(out / "vocab.json"), str(out / "merges.txt"),
        bos_token="</s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
    )
    image_processor = transformers.BlipImageProcessor(size={"height": 32, "width": 32})
    processor = transformers.Blip2Processor(image_processor, tokenizer, num_query_tokens=4)
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")

    config = transformers.Blip2Config(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=2, image_size=32, patch_size=8),
        qformer_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                            num_attention_heads=2, encoder_hidden_size=32, vocab_size=len(tokenizer)),
        text_config=dict(model_type="opt", vocab_size=len(tokenizer), hidden_size=32,
                         num_hidden_layers=1, ffn_dim=64, num_attention_heads=2,
                         word_embed_proj_dim=32, max_position_embeddings=64,
                         bos_token_id=1, eos_token_id=1, pad_token_id=0),
        num_query_tokens=4,
        image_token_index=image_token_id,
    )
    torch.manual_seed(0)
    model = transformers.Blip2ForConditionalGeneration(config).eval()
    # A random model tends to emit EOS (or another special token) first, which would decode to
    # "". Zeroing those output rows makes the greedy caption contain ordinary tokens.
    with torch.no_grad():
        model.get_output_embeddings().weight[[0, 1, 2, image_token_id]] = 0
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def test_tiny_blip2_captions_through_the_real_loader(tiny_blip2_dir, monkeypatch):
    monkeypatch.setenv("IC_BLIP2_PATH", str(tiny_blip2_dir))
    captioner = Blip2Captioner(frames_per_clip=3, max_new_tokens=6)
    assert captioner._model is None  # lazy: nothing loaded before the first caption
    frames = np.random.default_rng(0).integers(0, 256, size=(8, 64, 96, 3), dtype=np.uint8)
    descriptions = captioner.describe(frames[[0, 4, 7]])
    assert len(descriptions) == 3 and all(isinstance(d, str) and d for d in descriptions)
    caption = captioner.caption(frames)
    assert isinstance(caption, str) and caption
    assert set(caption.split("; ")) == set(descriptions)
    assert "<image>" not in caption


def test_a_symlinked_video_is_listed_and_captioned_by_its_own_name(tmp_path):
    """A crawl that stores blobs once and links them under their WebVid ids: the link's name is
    the id, and the manifest names the input path, not the blob's."""
    from ic_data.pipeline import CurationConfig, discover_videos, plan_chunks

    (tmp_path / "vids").mkdir()
    (tmp_path / "blobs").mkdir()
    (tmp_path / "blobs" / "abc.mp4").write_bytes(b"not decoded here")
    (tmp_path / "vids" / "1002.mp4").symlink_to("../blobs/abc.mp4")
    csv_path = tmp_path / "captions.csv"
    csv_path.write_text("videoid,name\n1002,a dog\nabc,a blob\n", encoding="utf-8")
    videos = discover_videos(tmp_path / "vids")
    assert [p for _, p in videos] == [str(tmp_path / "vids" / "1002.mp4")]
    (chunk,) = plan_chunks(videos, CurationConfig(captions_csv=str(csv_path)), chunk_size=4)
    assert dict(chunk.captions) == {videos[0][0]: "a dog"}


@pytest.mark.parametrize("case", ["unclosed quote", "not UTF-8 after the first 8 KiB", "a huge field"])
def test_a_broken_csv_body_is_one_error_naming_the_file(tmp_path, case):
    """The arguments' check reads the header only (WebVid's CSV is gigabytes); what breaks
    further in is still one error naming the file, which the curate flow ends Failed with, not
    a silently swallowed row or a traceback."""
    from ic_data.errors import BadInputError
    from ic_data.pipeline import CurationConfig, plan_chunks

    csv_path = tmp_path / "captions.csv"
    rows = "".join(f"{i},caption {i}\n" for i in range(2000, 3000)).encode()
    body = {
        # Without strict parsing 1001's caption would swallow the rest of the file, 1002's row too.
        "unclosed quote": b'videoid,name\n1000,fine\n1001,"never closed\n1002,dog\n',
        "not UTF-8 after the first 8 KiB": b"videoid,name\n" + rows + b"1001,caf\xe9\n",
        "a huge field": b"videoid,name\n1001," + b"x" * 200_000 + b"\n",
    }[case]
    csv_path.write_bytes(body)
    with pytest.raises(BadInputError, match=f"^{re.escape(str(csv_path))}: ") as err:
        load_webvid_captions(csv_path)
    assert len(str(err.value)) < 300 and "\n" not in str(err.value)
    with pytest.raises(BadInputError):
        plan_chunks([("v-1", str(tmp_path / "1001.mp4"))], CurationConfig(captions_csv=str(csv_path)))
