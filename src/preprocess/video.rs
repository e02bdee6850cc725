//! Video decoding through FFmpeg's own libraries (`ffmpeg-next`), frame sampling as
//! DeepfakeBench does it, and rotation metadata applied as the `ffmpeg` CLI applies it.
//!
//! DeepfakeBench (`preprocessing/preprocess.py`) asks OpenCV for the frame count, samples
//! `np.linspace(0, n - 1, 32, dtype=int)` (or `np.arange(0, n, stride)`), then reads the video
//! front to back, keeping the frames whose running index was sampled. This module does the same
//! without OpenCV: `n` is the container's frame count (what OpenCV's `CAP_PROP_FRAME_COUNT`
//! reports for FFmpeg-backed files), or, where the container does not record it, the number of
//! video packets (one demuxing pass, no decoding). Frames come out in presentation order and are
//! converted to RGB with swscale's bicubic flags, as OpenCV's FFmpeg backend converts them.
//! Frames are handed to a callback one at a time, so an 8K video never holds more than one
//! decoded frame in memory.

use std::path::Path;
use std::sync::Once;

use ffmpeg::format::Pixel;
use ffmpeg::software::scaling::{Context as Scaler, Flags};
use ffmpeg_next as ffmpeg;
use image::RgbImage;

use crate::{Error, Result};

/// Which frames of a video to take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sampling {
    /// `n` frames at `np.linspace(0, count - 1, n, dtype=int)` (DeepfakeBench's default, n = 32).
    Linspace(usize),
    /// Every `k`-th frame from the first: `np.arange(0, count, k)`.
    Stride(usize),
}

impl Default for Sampling {
    fn default() -> Self {
        Self::Linspace(32)
    }
}

/// The frame indices `sampling` takes from a video of `count` frames: sorted, without the
/// duplicates that `linspace` gives when `count < n` (DeepfakeBench tests membership, so a
/// frame is processed once).
pub fn sample_indices(count: usize, sampling: Sampling) -> Vec<usize> {
    if count == 0 {
        return Vec::new();
    }
    let mut idx: Vec<usize> = match sampling {
        Sampling::Linspace(0) => Vec::new(),
        Sampling::Linspace(1) => vec![0],
        Sampling::Linspace(n) => {
            // numpy: y = arange(n) * step with step = (stop - start) / (n - 1); y[-1] = stop;
            // floor for an integer dtype.
            let step = (count - 1) as f64 / (n - 1) as f64;
            (0..n).map(|i| if i == n - 1 { count - 1 } else { (i as f64 * step).floor() as usize }).collect()
        }
        Sampling::Stride(k) => (0..count).step_by(k.max(1)).collect(),
    };
    idx.dedup();
    idx
}

/// What the container says about a video stream.
#[derive(Debug, Clone, PartialEq)]
pub struct VideoInfo {
    /// Coded size, before rotation.
    pub width: u32,
    pub height: u32,
    /// Frame count used for sampling: the container's, else the number of video packets.
    pub frame_count: usize,
    /// Whether `frame_count` came from the container (`false`: counted packets).
    pub count_from_header: bool,
    /// Clockwise rotation to apply for display, in degrees: 0, 90, 180 or 270.
    pub rotation: u32,
    /// Codec name, e.g. `h264`.
    pub codec: String,
    /// Average frame rate (frames per second), 0 when unknown.
    pub fps: f64,
}

/// How decoding went: how many frames the decoder produced and why it stopped early, if it did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DecodeSummary {
    /// Frames that came out of the decoder.
    pub decoded: usize,
    /// Sampled frames handed to the callback.
    pub delivered: usize,
    /// Sampled indices never reached (the video ended before them, or failed to decode).
    pub missing: Vec<usize>,
    /// A decoder or demuxer error that ended decoding early, if any.
    pub error: Option<String>,
}

/// Initialises FFmpeg once per process and silences its log.
pub(super) fn init() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Failure is only possible in ancient FFmpeg builds; decoding then reports its own errors.
        let _ = ffmpeg::init();
        // Corrupt inputs make FFmpeg chatty on stderr; dfdet reports them itself.
        ffmpeg::util::log::set_level(ffmpeg::util::log::Level::Quiet);
    });
}

fn bad(path: &Path, what: impl std::fmt::Display) -> Error {
    Error::format(path, format!("cannot decode video: {what}"))
}

/// The rotation (clockwise degrees, a multiple of 90) the `ffmpeg` CLI applies for a display
/// matrix (libavutil `av_display_rotation_get`, then fftools' `get_rotation` rounding).
pub fn display_rotation(matrix: &[i32; 9]) -> u32 {
    let fp = |v: i32| v as f64 / 65536.0;
    let sx = fp(matrix[0]).hypot(fp(matrix[3]));
    let sy = fp(matrix[1]).hypot(fp(matrix[4]));
    if sx == 0.0 || sy == 0.0 {
        return 0;
    }
    // av_display_rotation_get is counter-clockwise; the CLI negates it.
    let ccw = -(fp(matrix[1]) / sy).atan2(fp(matrix[0]) / sx).to_degrees();
    let mut theta = -ccw.round();
    theta -= 360.0 * (theta / 360.0 + 0.9 / 360.0).floor();
    match theta.round() as i64 {
        t if (t - 90).abs() < 1 => 90,
        t if (t - 180).abs() < 1 => 180,
        t if (t - 270).abs() < 1 => 270,
        _ => 0,
    }
}

fn stream_rotation(stream: &ffmpeg::format::stream::Stream) -> u32 {
    for side in stream.side_data() {
        if side.kind() == ffmpeg::codec::packet::side_data::Type::DisplayMatrix && side.data().len() >= 36 {
            let d = side.data();
            let mut m = [0i32; 9];
            for (i, v) in m.iter_mut().enumerate() {
                *v = i32::from_ne_bytes([d[4 * i], d[4 * i + 1], d[4 * i + 2], d[4 * i + 3]]);
            }
            return display_rotation(&m);
        }
    }
    0
}

/// Opens `path` and reads what its best video stream says about itself, counting packets when
/// the container has no frame count.
pub fn probe(path: &Path) -> Result<VideoInfo> {
    init();
    let mut input = ffmpeg::format::input(path).map_err(|e| bad(path, e))?;
    let (index, info) = stream_info(path, &input)?;
    let mut info = info;
    if info.frame_count == 0 {
        info.frame_count = input.packets().filter(|(s, _)| s.index() == index).count();
        info.count_from_header = false;
    }
    Ok(info)
}

fn stream_info(path: &Path, input: &ffmpeg::format::context::Input) -> Result<(usize, VideoInfo)> {
    let stream = input.streams().best(ffmpeg::media::Type::Video).ok_or_else(|| bad(path, "no video stream"))?;
    let params = stream.parameters();
    let codec = ffmpeg::codec::context::Context::from_parameters(params).map_err(|e| bad(path, e))?;
    let decoder = codec.decoder().video().map_err(|e| bad(path, e))?;
    let rate = stream.avg_frame_rate();
    let fps = if rate.denominator() != 0 { rate.numerator() as f64 / rate.denominator() as f64 } else { 0.0 };
    let info = VideoInfo {
        width: decoder.width(),
        height: decoder.height(),
        frame_count: stream.frames().max(0) as usize,
        count_from_header: stream.frames() > 0,
        rotation: stream_rotation(&stream),
        codec: decoder.codec().map(|c| c.name().to_string()).unwrap_or_else(|| "unknown".into()),
        fps,
    };
    Ok((stream.index(), info))
}

/// Decodes `path` front to back and calls `frame(index, image)` for every frame that `sampling`
/// takes, in order, as an upright RGB image. Stops decoding after the last sampled frame.
///
/// A file that cannot be opened, has no video stream or no decoder is an error. A decoding error
/// part-way is not: it ends decoding, is reported in the summary, and the sampled frames not
/// reached are listed as missing.
pub fn decode_sampled(
    path: &Path,
    sampling: Sampling,
    mut frame: impl FnMut(usize, RgbImage),
) -> Result<(VideoInfo, DecodeSummary)> {
    let info = probe(path)?;
    let wanted = sample_indices(info.frame_count, sampling);
    let mut summary = DecodeSummary::default();
    if wanted.is_empty() {
        return Ok((info, summary));
    }
    let mut input = ffmpeg::format::input(path).map_err(|e| bad(path, e))?;
    let (index, _) = stream_info(path, &input)?;
    let params = input.stream(index).expect("stream index from best()").parameters();
    let mut decoder = ffmpeg::codec::context::Context::from_parameters(params)
        .and_then(|c| c.decoder().video())
        .map_err(|e| bad(path, e))?;

    let mut state = Converter { scaler: None, rotation: info.rotation };
    let mut next = 0; // position in `wanted`
    let mut decoded = ffmpeg::frame::Video::empty();
    let mut drain = |decoder: &mut ffmpeg::decoder::Video,
                     summary: &mut DecodeSummary,
                     next: &mut usize|
     -> std::result::Result<(), String> {
        while *next < wanted.len() && decoder.receive_frame(&mut decoded).is_ok() {
            let i = summary.decoded;
            summary.decoded += 1;
            if i == wanted[*next] {
                *next += 1;
                frame(i, state.convert(&decoded)?);
                summary.delivered += 1;
            }
        }
        Ok(())
    };
    let mut error = None;
    for (stream, packet) in input.packets() {
        if next >= wanted.len() {
            break;
        }
        if stream.index() != index {
            continue;
        }
        if let Err(e) = decoder.send_packet(&packet) {
            // A damaged packet: skip it, as OpenCV's reader does, and keep going.
            if !matches!(e, ffmpeg::Error::InvalidData) {
                error = Some(e.to_string());
                break;
            }
        }
        if let Err(e) = drain(&mut decoder, &mut summary, &mut next) {
            error = Some(e);
            break;
        }
    }
    if error.is_none() && next < wanted.len() {
        let _ = decoder.send_eof();
        if let Err(e) = drain(&mut decoder, &mut summary, &mut next) {
            error = Some(e);
        }
    }
    summary.missing = wanted[next..].to_vec();
    summary.error = error;
    Ok((info, summary))
}

/// Converts decoded frames to upright RGB, rebuilding the scaler when the frame size or format
/// changes mid-stream.
struct Converter {
    scaler: Option<(Scaler, Pixel, u32, u32)>,
    rotation: u32,
}

impl Converter {
    fn convert(&mut self, frame: &ffmpeg::frame::Video) -> std::result::Result<RgbImage, String> {
        let (fmt, w, h) = (frame.format(), frame.width(), frame.height());
        if w == 0 || h == 0 {
            return Err(format!("decoded a frame of size {w}x{h}"));
        }
        let stale = !matches!(&self.scaler, Some((_, f, sw, sh)) if *f == fmt && *sw == w && *sh == h);
        if stale {
            // OpenCV's FFmpeg backend converts with SWS_BICUBIC.
            let s = Scaler::get(fmt, w, h, Pixel::RGB24, w, h, Flags::BICUBIC)
                .map_err(|e| format!("cannot convert {fmt:?} {w}x{h} to RGB: {e}"))?;
            self.scaler = Some((s, fmt, w, h));
        }
        let scaler = &mut self.scaler.as_mut().expect("set above").0;
        let mut rgb = ffmpeg::frame::Video::empty();
        scaler.run(frame, &mut rgb).map_err(|e| format!("cannot convert {fmt:?} {w}x{h} to RGB: {e}"))?;
        let stride = rgb.stride(0);
        let data = rgb.data(0);
        let row = 3 * w as usize;
        let mut buf = Vec::with_capacity(row * h as usize);
        for y in 0..h as usize {
            buf.extend_from_slice(&data[y * stride..y * stride + row]);
        }
        let image = RgbImage::from_raw(w, h, buf).expect("sized above");
        Ok(match self.rotation {
            90 => image::imageops::rotate90(&image),
            180 => image::imageops::rotate180(&image),
            270 => image::imageops::rotate270(&image),
            _ => image,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linspace_matches_numpy() {
        // np.linspace(0, 119, 32, dtype=int)
        let want = [
            0, 3, 7, 11, 15, 19, 23, 26, 30, 34, 38, 42, 46, 49, 53, 57, 61, 65, 69, 72, 76, 80, 84, 88, 92, 95, 99,
            103, 107, 111, 115, 119,
        ];
        assert_eq!(sample_indices(120, Sampling::Linspace(32)), want);
        // Fewer frames than samples: each frame once.
        assert_eq!(sample_indices(3, Sampling::Linspace(32)), [0, 1, 2]);
        assert_eq!(sample_indices(1, Sampling::Linspace(32)), [0]);
        assert!(sample_indices(0, Sampling::Linspace(32)).is_empty());
        assert_eq!(sample_indices(10, Sampling::Stride(4)), [0, 4, 8]);
    }

    #[test]
    fn display_matrix_rotations() {
        let one = 1 << 16;
        let unit = [one, 0, 0, 0, one, 0, 0, 0, 1 << 30];
        assert_eq!(display_rotation(&unit), 0);
        // av_display_rotation_set(m, -90): the CLI turns the picture 90 degrees clockwise.
        let cw90 = [0, one, 0, -one, 0, 0, 0, 0, 1 << 30];
        assert_eq!(display_rotation(&cw90), 90);
        let r180 = [-one, 0, 0, 0, -one, 0, 0, 0, 1 << 30];
        assert_eq!(display_rotation(&r180), 180);
        let ccw90 = [0, -one, 0, one, 0, 0, 0, 0, 1 << 30];
        assert_eq!(display_rotation(&ccw90), 270);
    }
}
