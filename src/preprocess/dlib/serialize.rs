//! dlib's serialisation format (`dlib/serialize.h`): integers packed as a control byte plus
//! little-endian bytes (`pack_int`), floats and doubles as a 64-bit mantissa and a 16-bit exponent
//! (`float_details`), and column vectors (`matrix<float,0,1>`). Both the shape predictor's `.dat`
//! file and the HOG detector's model are read with it.

use std::path::Path;

use crate::{Error, Result};

/// A reader of dlib's serialisation format.
pub(super) struct Reader<'a> {
    pub(super) data: &'a [u8],
    pub(super) pos: usize,
    pub(super) path: &'a Path,
}

impl Reader<'_> {
    pub(super) fn err(&self, what: &str) -> Error {
        Error::format(self.path, format!("not a dlib model file: {what} at byte {}", self.pos))
    }

    pub(super) fn byte(&mut self) -> Result<u8> {
        let b = *self.data.get(self.pos).ok_or_else(|| self.err("unexpected end of file"))?;
        self.pos += 1;
        Ok(b)
    }

    /// `pack_int`: a control byte (bit 7: negative, low 4 bits: byte count), then little-endian bytes.
    pub(super) fn int(&mut self) -> Result<i64> {
        let ctl = self.byte()?;
        let n = (ctl & 0x0F) as usize;
        if n > 8 || ctl & 0x70 != 0 {
            return Err(self.err("bad integer control byte"));
        }
        let mut v: u64 = 0;
        for i in 0..n {
            v |= (self.byte()? as u64) << (8 * i);
        }
        Ok(if ctl & 0x80 != 0 { -(v as i64) } else { v as i64 })
    }

    pub(super) fn len(&mut self) -> Result<usize> {
        let v = self.int()?;
        usize::try_from(v).map_err(|_| self.err("negative length"))
    }

    /// `float_details`: mantissa * 2^exponent (32000-32002: inf, -inf, NaN).
    pub(super) fn float(&mut self) -> Result<f32> {
        self.double().map(|v| v as f32)
    }

    /// A `double`, in the same format as floats.
    pub(super) fn double(&mut self) -> Result<f64> {
        let mantissa = self.int()?;
        let exponent = self.int()?;
        Ok(match exponent {
            32000 => f64::INFINITY,
            32001 => f64::NEG_INFINITY,
            32002 => f64::NAN,
            e => mantissa as f64 * 2f64.powi(e as i32),
        })
    }

    /// A column vector `matrix<float,0,1>`: rows and columns (negated in the current format),
    /// then the values.
    pub(super) fn column(&mut self) -> Result<Vec<f32>> {
        let (r, c) = (self.int()?.unsigned_abs() as usize, self.int()?.unsigned_abs() as usize);
        if c != 1 && r * c != 0 {
            return Err(self.err("expected a column vector"));
        }
        (0..r * c).map(|_| self.float()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_integers_and_floats() {
        let path = Path::new("mem");
        // 0 -> [0x00]; 300 -> [0x02, 0x2c, 0x01]; -5 -> [0x81, 0x05].
        let data = [0x00, 0x02, 0x2c, 0x01, 0x81, 0x05];
        let mut r = Reader { data: &data, pos: 0, path };
        assert_eq!((r.int().unwrap(), r.int().unwrap(), r.int().unwrap()), (0, 300, -5));
        // 0.75 = 3 * 2^-2: mantissa 3, exponent -2.
        let data = [0x01, 0x03, 0x81, 0x02];
        let mut r = Reader { data: &data, pos: 0, path };
        assert_eq!(r.float().unwrap(), 0.75);
        assert!(Reader { data: &[0x01], pos: 0, path }.int().is_err());
    }
}
