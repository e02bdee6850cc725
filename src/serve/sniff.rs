//! What an upload is, from its first bytes: the file name a client sends is not trusted.

/// A media type dfdet can score, with the extension the scorer reads it by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Image(&'static str),
    Video(&'static str),
}

impl Kind {
    pub fn extension(self) -> &'static str {
        match self {
            Self::Image(e) | Self::Video(e) => e,
        }
    }
}

/// The kind of a file starting with `head` (at least its first 16 bytes when it has them), or
/// `None` for anything else.
pub fn sniff(head: &[u8]) -> Option<Kind> {
    let at = |offset: usize, magic: &[u8]| head.get(offset..offset + magic.len()) == Some(magic);
    Some(match () {
        _ if at(0, b"\x89PNG\r\n\x1a\n") => Kind::Image("png"),
        _ if at(0, b"\xff\xd8\xff") => Kind::Image("jpg"),
        _ if at(0, b"GIF87a") || at(0, b"GIF89a") => Kind::Image("gif"),
        _ if at(0, b"BM") && head.len() >= 14 => Kind::Image("bmp"),
        _ if at(0, b"RIFF") && at(8, b"WEBP") => Kind::Image("webp"),
        _ if at(0, b"II*\0") || at(0, b"MM\0*") => Kind::Image("tiff"),
        // ISO base media (MP4, MOV, M4V, 3GP): a box of type `ftyp` first.
        _ if at(4, b"ftyp") => Kind::Video("mp4"),
        _ if at(0, b"\x1a\x45\xdf\xa3") => Kind::Video("mkv"),
        _ if at(0, b"RIFF") && at(8, b"AVI ") => Kind::Video("avi"),
        _ if at(0, b"FLV\x01") => Kind::Video("flv"),
        _ if at(0, b"\x00\x00\x01\xba") => Kind::Video("mpg"),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_the_bytes() {
        assert_eq!(sniff(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"), Some(Kind::Image("png")));
        assert_eq!(sniff(b"\xff\xd8\xff\xe0\0\x10JFIF"), Some(Kind::Image("jpg")));
        assert_eq!(sniff(b"\0\0\0\x20ftypisom\0\0\x02\0"), Some(Kind::Video("mp4")));
        assert_eq!(sniff(b"RIFF\0\0\0\0WEBPVP8 "), Some(Kind::Image("webp")));
        assert_eq!(sniff(b"RIFF\0\0\0\0AVI LIST"), Some(Kind::Video("avi")));
        for other in [&b"<html><body>"[..], b"", b"\x89PN", b"PK\x03\x04 a zip", b"%PDF-1.7"] {
            assert_eq!(sniff(other), None, "{other:?}");
        }
    }
}
