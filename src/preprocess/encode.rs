//! Writing videos through FFmpeg's own libraries (annotated output of `dfdet predict`): the
//! first encoder this build of FFmpeg can open, in the order H.264 (libx264, else the build's
//! default H.264 encoder), MPEG-4 part 2, FFV1, into the container the output's extension names.
//! The choice is made when the file is created and reported by [`VideoWriter::codec`].

use std::path::{Path, PathBuf};

use ffmpeg::format::Pixel;
use ffmpeg::software::scaling::{Context as Scaler, Flags};
use ffmpeg::{Dictionary, Packet, Rational};
use ffmpeg_next as ffmpeg;
use image::RgbImage;

use super::video::init;
use crate::{Error, Result};

/// Encoders tried in order (`None`: the build's default encoder for H.264).
const CANDIDATES: [Option<&str>; 4] = [Some("libx264"), None, Some("mpeg4"), Some("ffv1")];

/// An open video file that RGB frames are appended to.
pub struct VideoWriter {
    output: ffmpeg::format::context::Output,
    encoder: ffmpeg::encoder::Video,
    scaler: Scaler,
    /// The encoder's time base: one tick per source frame.
    time_base: Rational,
    width: u32,
    height: u32,
    codec: String,
    path: PathBuf,
    frames: usize,
}

fn failed(path: &Path, what: impl std::fmt::Display) -> Error {
    Error::format(path, format!("cannot write video: {what}"))
}

/// A frame rate as FFmpeg wants it: whole numbers exact, NTSC-style rates over 1001, others
/// to a thousandth (MPEG-4 part 2 allows time bases up to 65535).
fn frame_rate(fps: f64) -> Rational {
    let fps = if fps.is_finite() && fps > 0.0 { fps.clamp(1.0, 240.0) } else { 25.0 };
    let ntsc = fps * 1.001;
    if (fps - fps.round()).abs() < 1e-3 {
        Rational::new(fps.round() as i32, 1)
    } else if (ntsc - ntsc.round()).abs() < 1e-3 {
        Rational::new(ntsc.round() as i32 * 1000, 1001)
    } else {
        Rational::new((fps * 1000.0).round() as i32, 1000)
    }
}

impl VideoWriter {
    /// Creates `path` for frames of `width` x `height` (rounded up to even sizes, as 4:2:0
    /// needs; frames are padded with black) shown at `fps` frames per second. A frame's time
    /// stamp is its index in the source, so frames left out keep the source's timing.
    pub fn create(path: &Path, width: u32, height: u32, fps: f64) -> Result<Self> {
        init();
        if width == 0 || height == 0 {
            return Err(failed(path, format!("frame size {width}x{height}")));
        }
        let (width, height) = (width.next_multiple_of(2), height.next_multiple_of(2));
        // A file that cannot be created is said as such, not as every encoder failing.
        if let Err(e) = std::fs::File::create(path) {
            return Err(failed(path, format!("cannot create it: {e}")));
        }
        let rate = frame_rate(fps);
        let time_base = rate.invert();
        let mut tried = Vec::new();
        for candidate in CANDIDATES {
            let codec = match candidate {
                Some(name) => ffmpeg::encoder::find_by_name(name),
                None => ffmpeg::encoder::find(ffmpeg::codec::Id::H264),
            };
            let Some(codec) = codec else { continue };
            if tried.iter().any(|(name, _): &(String, String)| name == codec.name()) {
                continue;
            }
            match Self::open(path, codec, width, height, rate) {
                Ok((output, encoder)) => {
                    let scaler =
                        Scaler::get(Pixel::RGB24, width, height, Pixel::YUV420P, width, height, Flags::BILINEAR)
                            .map_err(|e| failed(path, format!("cannot convert RGB to YUV: {e}")))?;
                    return Ok(Self {
                        output,
                        encoder,
                        scaler,
                        time_base,
                        width,
                        height,
                        codec: codec.name().to_string(),
                        path: path.to_path_buf(),
                        frames: 0,
                    });
                }
                Err(e) => tried.push((codec.name().to_string(), e.to_string())),
            }
        }
        let _ = std::fs::remove_file(path);
        let why: Vec<String> = tried.iter().map(|(n, e)| format!("{n}: {e}")).collect();
        Err(failed(
            path,
            if why.is_empty() {
                "this FFmpeg build has none of the encoders libx264, H.264, mpeg4, ffv1".to_string()
            } else {
                format!("no encoder could write this container ({})", why.join("; "))
            },
        ))
    }

    fn open(
        path: &Path,
        codec: ffmpeg::Codec,
        width: u32,
        height: u32,
        rate: Rational,
    ) -> std::result::Result<(ffmpeg::format::context::Output, ffmpeg::encoder::Video), ffmpeg::Error> {
        let mut output = ffmpeg::format::output(path)?;
        let global_header = output.format().flags().contains(ffmpeg::format::Flags::GLOBAL_HEADER);
        let mut encoder = ffmpeg::codec::context::Context::new_with_codec(codec).encoder().video()?;
        encoder.set_width(width);
        encoder.set_height(height);
        encoder.set_format(Pixel::YUV420P);
        encoder.set_frame_rate(Some(rate));
        encoder.set_time_base(rate.invert());
        if global_header {
            encoder.set_flags(ffmpeg::codec::Flags::GLOBAL_HEADER);
        }
        let mut options = Dictionary::new();
        if codec.name() == "libx264" {
            options.set("preset", "veryfast");
            options.set("crf", "20");
        } else {
            // About a quarter of a bit per pixel: boxes and digits stay sharp.
            let bits = (width as f64 * height as f64 * f64::from(rate) / 4.0) as usize;
            encoder.set_bit_rate(bits.max(400_000));
        }
        let encoder = encoder.open_with(options)?;
        let mut stream = output.add_stream(codec)?;
        stream.set_parameters(&encoder);
        stream.set_time_base(rate.invert());
        let mut options = Dictionary::new();
        // MP4/MOV: the index first, so that a browser plays the file while it loads.
        options.set("movflags", "+faststart");
        output.write_header_with(options)?;
        Ok((output, encoder))
    }

    /// The encoder in use (e.g. `libx264`).
    pub fn codec(&self) -> &str {
        &self.codec
    }

    /// Appends `frame`, shown from source frame `index` on. Indices must increase.
    pub fn write(&mut self, index: usize, frame: &RgbImage) -> Result<()> {
        let mut rgb = ffmpeg::frame::Video::new(Pixel::RGB24, self.width, self.height);
        let stride = rgb.stride(0);
        let data = rgb.data_mut(0);
        data.fill(0);
        let (w, h) = (frame.width().min(self.width) as usize, frame.height().min(self.height) as usize);
        let raw = frame.as_raw();
        let row = 3 * frame.width() as usize;
        for y in 0..h {
            data[y * stride..y * stride + 3 * w].copy_from_slice(&raw[y * row..y * row + 3 * w]);
        }
        let mut yuv = ffmpeg::frame::Video::empty();
        self.scaler.run(&rgb, &mut yuv).map_err(|e| failed(&self.path, e))?;
        yuv.set_pts(Some(index as i64));
        self.encoder.send_frame(&yuv).map_err(|e| failed(&self.path, e))?;
        self.frames += 1;
        self.drain()
    }

    fn drain(&mut self) -> Result<()> {
        let stream_base = self.output.stream(0).map(|s| s.time_base()).unwrap_or(self.time_base);
        let mut packet = Packet::empty();
        while self.encoder.receive_packet(&mut packet).is_ok() {
            packet.set_stream(0);
            packet.rescale_ts(self.time_base, stream_base);
            packet.write_interleaved(&mut self.output).map_err(|e| failed(&self.path, e))?;
        }
        Ok(())
    }

    /// Flushes the encoder and closes the file; returns the number of frames written.
    pub fn finish(mut self) -> Result<usize> {
        self.encoder.send_eof().map_err(|e| failed(&self.path, e))?;
        self.drain()?;
        self.output.write_trailer().map_err(|e| failed(&self.path, e))?;
        Ok(self.frames)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_rates_as_ffmpeg_wants_them() {
        assert_eq!(frame_rate(25.0), Rational::new(25, 1));
        assert_eq!(frame_rate(30000.0 / 1001.0), Rational::new(30000, 1001));
        assert_eq!(frame_rate(12.5), Rational::new(12500, 1000));
        assert_eq!(frame_rate(0.0), Rational::new(25, 1));
        assert_eq!(frame_rate(f64::NAN), Rational::new(25, 1));
    }
}
