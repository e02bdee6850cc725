//! Drawing on frames for annotated output: a box per face in the colour of its p(fake), the
//! number beside it, and a banner line, in an 8x8 bitmap font scaled to the frame (font8x8's
//! public-domain glyphs, so no font file has to be found at run time).

use image::{Rgb, RgbImage};

/// The colour of a p(fake): green at 0, yellow at 0.5, red at 1 (NaN: grey).
pub fn score_colour(p: f32) -> Rgb<u8> {
    if !p.is_finite() {
        return Rgb([128, 128, 128]);
    }
    let p = p.clamp(0.0, 1.0);
    let red = (2.0 * p).min(1.0);
    let green = (2.0 * (1.0 - p)).min(1.0);
    Rgb([(255.0 * red).round() as u8, (255.0 * green).round() as u8, 0])
}

/// Text and line scale for a frame: 1 up to 180 pixels on the short side, one more per 180.
pub fn scale_for(image: &RgbImage) -> u32 {
    image.width().min(image.height()).div_ceil(180).max(1)
}

/// Fills `[x1, x2) x [y1, y2)`, clipped to the image.
pub fn fill(image: &mut RgbImage, x1: i64, y1: i64, x2: i64, y2: i64, colour: Rgb<u8>) {
    let (w, h) = (image.width() as i64, image.height() as i64);
    for y in y1.max(0)..y2.min(h) {
        for x in x1.max(0)..x2.min(w) {
            image.put_pixel(x as u32, y as u32, colour);
        }
    }
}

/// The outline of `bbox` (`[x1, y1, x2, y2]`), `thickness` pixels wide inside the box, clipped.
pub fn outline(image: &mut RgbImage, bbox: [f32; 4], thickness: u32, colour: Rgb<u8>) {
    let [x1, y1, x2, y2] = bbox.map(|v| v.round() as i64);
    let t = thickness as i64;
    fill(image, x1, y1, x2, y1 + t, colour);
    fill(image, x1, y2 - t, x2, y2, colour);
    fill(image, x1, y1, x1 + t, y2, colour);
    fill(image, x2 - t, y1, x2, y2, colour);
}

/// Width and height of `text` at `scale`, with a one-glyph-pixel margin around it.
pub fn text_size(text: &str, scale: u32) -> (u32, u32) {
    ((8 * text.chars().count() as u32 + 2) * scale, 10 * scale)
}

/// Writes `text` (ASCII; other characters as `?`) with its top-left corner at `(x, y)` on a
/// filled `background`, clipped to the image.
pub fn text(image: &mut RgbImage, x: i64, y: i64, scale: u32, text: &str, colour: Rgb<u8>, background: Rgb<u8>) {
    let (w, h) = text_size(text, scale);
    let s = scale as i64;
    fill(image, x, y, x + w as i64, y + h as i64, background);
    for (k, c) in text.chars().enumerate() {
        let glyph = font8x8::legacy::BASIC_LEGACY[if c.is_ascii() { c as usize } else { '?' as usize }];
        let left = x + s * (1 + 8 * k as i64);
        for (row, bits) in glyph.iter().enumerate() {
            for col in 0..8 {
                // Bit 0 is the leftmost pixel of a row.
                if bits >> col & 1 == 1 {
                    let (px, py) = (left + s * col, y + s * (1 + row as i64));
                    fill(image, px, py, px + s, py + s, colour);
                }
            }
        }
    }
}

/// A face's box in the colour of `p_fake`, with the number on a tab above the box (inside it
/// when the box touches the top edge).
pub fn face(image: &mut RgbImage, bbox: [f32; 4], p_fake: f32) {
    let scale = scale_for(image);
    let colour = score_colour(p_fake);
    outline(image, bbox, 2 * scale, colour);
    let label = format!("{p_fake:.2}");
    let (_, th) = text_size(&label, scale);
    let x = bbox[0].round() as i64;
    let top = bbox[1].round() as i64 - th as i64;
    let y = if top >= 0 { top } else { bbox[1].round() as i64 };
    text(image, x, y, scale, &label, Rgb([0, 0, 0]), colour);
}

/// A line of text on a dark band at the top-left corner.
pub fn banner(image: &mut RgbImage, line: &str, colour: Rgb<u8>) {
    let scale = scale_for(image);
    text(image, 0, 0, scale, line, colour, Rgb([0, 0, 0]));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_run_green_to_red() {
        assert_eq!(score_colour(0.0), Rgb([0, 255, 0]));
        assert_eq!(score_colour(0.5), Rgb([255, 255, 0]));
        assert_eq!(score_colour(1.0), Rgb([255, 0, 0]));
        assert_eq!(score_colour(f32::NAN), Rgb([128, 128, 128]));
    }

    #[test]
    fn boxes_and_text_land_where_asked_and_clip() {
        let mut img = RgbImage::new(100, 60);
        face(&mut img, [10.0, 30.0, 50.0, 58.0], 1.0);
        // The outline is red, the inside untouched.
        assert_eq!(img.get_pixel(10, 40), &Rgb([255, 0, 0]));
        assert_eq!(img.get_pixel(49, 57), &Rgb([255, 0, 0]));
        assert_eq!(img.get_pixel(30, 45), &Rgb([0, 0, 0]));
        // The number's tab sits above the box: red background with black glyph pixels.
        let tab: Vec<_> = (20..30).flat_map(|y| (10..46).map(move |x| (x, y))).collect();
        assert!(tab.iter().any(|&(x, y)| img.get_pixel(x, y) == &Rgb([255, 0, 0])));
        assert!(tab.iter().any(|&(x, y)| img.get_pixel(x, y) == &Rgb([0, 0, 0])));
        // Boxes partly outside the frame are clipped, not a panic.
        face(&mut img, [-20.0, -20.0, 300.0, 300.0], 0.0);
        face(&mut img, [-20.0, -20.0, 50.0, 50.0], 0.0);
        assert_eq!(img.get_pixel(48, 40), &Rgb([0, 255, 0]));
        banner(&mut img, "video p(fake) 0.50 - \u{e9}", Rgb([255, 255, 255]));
        assert_eq!(img.get_pixel(0, 0), &Rgb([0, 0, 0]), "the banner's band");
    }
}
