//! The compressed model in dlib's `frontal_face_detector.h` (Debian `libdlib-dev`): the base64
//! text of its `sout << "..."` lines, compressed by dlib's `compress_stream::kernel_1ea`: an
//! order-4 PPM model (`entropy_decoder_model_kernel_5`: escape method D, Shkarin's information
//! inheritance) over a 32-bit range coder (`entropy_decoder::kernel_2a`), ended by a CRC-32.

/// The bytes of the serialised detector in `frontal_face_detector.h`: its `sout << "..."`
/// base64 lines, decoded, then decompressed.
pub fn decode_header(text: &str) -> std::result::Result<Vec<u8>, String> {
    let mut b64 = String::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("sout << \"") {
            let end = rest.rfind('"').ok_or("unterminated string in the header")?;
            b64.push_str(&rest[..end]);
        }
    }
    if b64.is_empty() {
        return Err("no base64 model text (`sout << \"...\"` lines) found".into());
    }
    let compressed = base64_decode(&b64)?;
    decompress(&compressed)
}

fn base64_decode(s: &str) -> std::result::Result<Vec<u8>, String> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for &c in s.as_bytes() {
        if c == b'=' {
            break;
        }
        let Some(v) = value(c) else {
            if c.is_ascii_whitespace() {
                continue;
            }
            return Err(format!("bad base64 character {:?}", c as char));
        };
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Ok(out)
}

/// dlib's `entropy_decoder::kernel_2a`: a 32-bit range decoder.
struct RangeDecoder<'a> {
    data: &'a [u8],
    pos: usize,
    low: u32,
    high: u32,
    target: u32,
    r: u32,
}

impl<'a> RangeDecoder<'a> {
    fn new(data: &'a [u8]) -> Self {
        let mut d = Self { data, pos: 0, low: 1, high: 0xffff_ffff, target: 0, r: 0 };
        for _ in 0..4 {
            d.target = (d.target << 8) | d.next_byte() as u32;
        }
        d
    }

    fn next_byte(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }

    fn get_target(&mut self, total: u32) -> u32 {
        self.r = (self.high.wrapping_sub(self.low).wrapping_add(1)) / total;
        let t = self.target.wrapping_sub(self.low) / self.r;
        t.min(total - 1)
    }

    fn decode(&mut self, low_count: u32, high_count: u32) {
        self.high = self.low.wrapping_add(self.r.wrapping_mul(high_count)).wrapping_sub(1);
        self.low = self.low.wrapping_add(self.r.wrapping_mul(low_count));
        self.r = 0;
        loop {
            if (self.high & 0xFF00_0000) != (self.low & 0xFF00_0000) {
                if self.high.wrapping_sub(self.low) < 0x10000 {
                    if self.high.wrapping_sub(self.low) > 0x1000 {
                        self.high >>= 1;
                        self.low >>= 1;
                        self.high = self.high.wrapping_add(self.low);
                        self.low = self.high;
                        self.high = self.high.wrapping_add(0xFF);
                        self.low = self.low.wrapping_sub(0xFF);
                    } else {
                        self.high >>= 1;
                        self.low >>= 1;
                        self.high = self.high.wrapping_add(self.low);
                        self.low = self.high;
                    }
                } else {
                    break;
                }
            } else {
                let b = self.next_byte();
                self.target = (self.target << 8) | b as u32;
                self.high = (self.high << 8) | 0xFF;
                self.low <<= 8;
                if self.low == 0 {
                    self.low = 1;
                }
            }
        }
    }
}

const NIL: u32 = u32::MAX;
const ROOT: u32 = 0;
const ALPHABET: u32 = 257;
const TOTAL_NODES: usize = 200_000;
const ORDER: usize = 4;

#[derive(Debug, Clone, Copy)]
struct Node {
    next: u32,
    child: u32,
    parent: u32,
    symbol: u16,
    count: u16,
    total: u16,
    escapes: u16,
}

const EMPTY: Node = Node { next: NIL, child: NIL, parent: NIL, symbol: 0, count: 0, total: 0, escapes: 0 };

/// dlib's `entropy_decoder_model_kernel_5<257, kernel_2a, 200000, 4>`: PPM (Moffat's
/// implementation strategy, escape method D, Shkarin's information inheritance).
struct Ppm {
    nodes: Vec<Node>,
    next_node: usize,
    cur: u32,
    cur_order: usize,
    exc: [u32; (ALPHABET as usize) / 32 + 1],
    exc_used: bool,
    stack: Vec<(u32, u32)>,
}

impl Ppm {
    fn new() -> Self {
        Self {
            nodes: vec![EMPTY; TOTAL_NODES],
            next_node: 1,
            cur: ROOT,
            cur_order: 0,
            exc: [0; (ALPHABET as usize) / 32 + 1],
            exc_used: false,
            stack: Vec::with_capacity(ORDER + 1),
        }
    }

    fn clear(&mut self) {
        self.next_node = 1;
        let root = &mut self.nodes[ROOT as usize];
        root.child = NIL;
        root.escapes = 0;
        root.total = 0;
        self.cur = ROOT;
        self.cur_order = 0;
        self.stack.clear();
        self.clear_exclusions();
    }

    fn clear_exclusions(&mut self) {
        self.exc_used = false;
        self.exc = [0; (ALPHABET as usize) / 32 + 1];
    }

    fn exclude(&mut self, s: u16) {
        self.exc_used = true;
        self.exc[(s >> 5) as usize] |= 1 << (s & 0x1F);
    }

    fn excluded(&self, s: u16) -> bool {
        self.exc[(s >> 5) as usize] & (1 << (s & 0x1F)) != 0
    }

    fn alloc(&mut self) -> u32 {
        let n = self.next_node as u32;
        self.next_node += 1;
        n
    }

    fn scale_counts(&mut self, t: u32) {
        let node = &mut self.nodes[t as usize];
        if node.escapes > 1 {
            node.escapes >>= 1;
        }
        let mut total = node.escapes;
        let mut n = node.child;
        while n != NIL {
            let c = &mut self.nodes[n as usize];
            if c.count > 1 {
                c.count >>= 1;
            }
            total = total.wrapping_add(c.count);
            n = c.next;
        }
        self.nodes[t as usize].total = total;
    }

    fn n(&mut self, i: u32) -> &mut Node {
        &mut self.nodes[i as usize]
    }

    fn decode(&mut self, coder: &mut RangeDecoder) -> u32 {
        let mut temp = self.cur;
        self.cur = NIL;
        let mut new_node = NIL;
        let mut local_order = self.cur_order;
        // c = the decoded symbol's count, t = its context's total (for the inheritance below).
        let (c, t): (u16, u16);
        let symbol: u32;
        if self.exc_used {
            self.clear_exclusions();
        }
        loop {
            let mut high_count: u32 = 0;
            if self.next_node < TOTAL_NODES {
                let mut total_count = self.nodes[temp as usize].total as u32;
                if total_count > 0 {
                    if total_count > 10000 {
                        self.scale_counts(temp);
                        total_count = self.nodes[temp as usize].total as u32;
                    }
                    if self.exc_used {
                        let mut n = self.nodes[temp as usize].child;
                        total_count = self.nodes[temp as usize].escapes as u32;
                        loop {
                            let node = self.nodes[n as usize];
                            if !self.excluded(node.symbol) {
                                total_count += node.count as u32;
                            }
                            if node.next == NIL {
                                break;
                            }
                            n = node.next;
                        }
                    }
                    let target = coder.get_target(total_count);
                    let mut n = self.nodes[temp as usize].child;
                    let mut last = NIL;
                    loop {
                        let node = self.nodes[n as usize];
                        if !self.excluded(node.symbol) {
                            high_count += node.count as u32;
                            self.exclude(node.symbol);
                        }
                        if high_count > target || node.next == NIL {
                            break;
                        }
                        last = n;
                        n = node.next;
                    }
                    if high_count > target {
                        let low_count = high_count - self.nodes[n as usize].count as u32;
                        if new_node != NIL {
                            self.n(new_node).parent = n;
                        }
                        let s = self.nodes[n as usize].symbol as u32;
                        coder.decode(low_count, high_count);
                        self.n(n).count = self.nodes[n as usize].count.wrapping_add(8);
                        c = self.nodes[n as usize].count;
                        self.n(temp).total = self.nodes[temp as usize].total.wrapping_add(8);
                        t = self.nodes[temp as usize].total;
                        if last != NIL {
                            // Move to the front of its context set.
                            self.n(last).next = self.nodes[n as usize].next;
                            self.n(n).next = self.nodes[temp as usize].child;
                            self.n(temp).child = n;
                        }
                        if self.cur == NIL {
                            if local_order < ORDER {
                                self.cur_order = local_order + 1;
                                self.cur = n;
                            } else {
                                self.cur = self.nodes[n as usize].parent;
                                self.cur_order = local_order;
                            }
                        }
                        symbol = s;
                        break;
                    } else {
                        if new_node != NIL {
                            let a = self.alloc();
                            self.n(new_node).parent = a;
                            new_node = a;
                        } else {
                            new_node = self.alloc();
                        }
                        self.n(n).next = new_node;
                        coder.decode(high_count, total_count);
                    }
                } else {
                    if new_node != NIL {
                        let a = self.alloc();
                        self.n(new_node).parent = a;
                        new_node = a;
                    } else {
                        new_node = self.alloc();
                    }
                    self.n(temp).child = new_node;
                }
                if self.cur == NIL && local_order < ORDER {
                    self.cur = new_node;
                    self.cur_order = local_order + 1;
                }
                {
                    let nn = self.n(new_node);
                    nn.child = NIL;
                    nn.escapes = 0;
                    nn.next = NIL;
                }
                self.stack.push((new_node, temp));
                self.n(new_node).total = 0;
                if temp != ROOT {
                    temp = self.nodes[temp as usize].parent;
                    local_order -= 1;
                    continue;
                }
                t = 2056;
                c = 8;
                let target = coder.get_target(ALPHABET);
                self.n(new_node).parent = ROOT;
                coder.decode(target, target + 1);
                symbol = target;
                if self.cur == NIL {
                    self.cur = ROOT;
                    self.cur_order = 0;
                }
                break;
            } else {
                self.clear();
                temp = self.cur;
                local_order = self.cur_order;
                self.cur = NIL;
                new_node = NIL;
            }
        }
        while let Some((n, nc)) = self.stack.pop() {
            self.n(n).symbol = symbol as u16;
            let ncn = self.nodes[nc as usize];
            if ncn.total != 0 {
                let temp2 = (t as i64 - c as i64 + ncn.total as i64 - 2 * ncn.escapes as i64) as u64;
                let mut v = (ncn.total as u64 * c as u64) / (temp2 | 1) + 2;
                if v > 50000 {
                    v = 50000;
                }
                self.n(n).count = v as u16;
                let x = self.n(nc);
                x.escapes = x.escapes.wrapping_add(4);
                x.total = x.total.wrapping_add((v as u16).wrapping_add(4));
            } else {
                let count = (3 + 5 * c as i64 / (t as i64 - c as i64)) as u16;
                self.n(n).count = count;
                let x = self.n(nc);
                x.escapes = 4;
                x.total = count.wrapping_add(4);
            }
            while self.nodes[nc as usize].total > 10000 {
                self.scale_counts(nc);
            }
        }
        symbol
    }
}

/// dlib's `compress_stream::kernel_1ea` decompression: PPM symbols until the end symbol (256),
/// then the CRC-32 of the output, with a synchronisation check every 20000 symbols.
pub fn decompress(data: &[u8]) -> std::result::Result<Vec<u8>, String> {
    let mut coder = RangeDecoder::new(data);
    let mut model = Ppm::new();
    let mut out = Vec::new();
    let mut count = 0;
    loop {
        if count == 20000 {
            if coder.get_target(8000) != 1500 {
                return Err("corrupt compressed data (synchronisation check failed)".into());
            }
            count = 0;
            coder.decode(1500, 1501);
        }
        count += 1;
        let s = model.decode(&mut coder);
        if s != 256 {
            out.push(s as u8);
            if coder.pos > data.len() + 8 {
                return Err("compressed data ended early".into());
            }
            continue;
        }
        let mut checksum = 0u32;
        for _ in 0..4 {
            checksum = (checksum << 8) | (model.decode(&mut coder) & 0xFF);
        }
        if checksum != crc32(&out) {
            return Err("corrupt compressed data (CRC mismatch)".into());
        }
        return Ok(out);
    }
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_and_crc() {
        assert_eq!(base64_decode("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }
}
