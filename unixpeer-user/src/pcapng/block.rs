//! pcapng blocks (draft-ietf-opsawg-pcapng): section header, interface
//! description, enhanced packet and interface statistics, little-endian,
//! each written whole so a reader of a live pipe never sees half a block.

use std::io::Write;

use super::PcapngError;

const SHB: u32 = 0x0A0D_0D0A;
const IDB: u32 = 1;
const ISB: u32 = 5;
const EPB: u32 = 6;
const BYTE_ORDER_MAGIC: u32 = 0x1A2B_3C4D;

const OPT_END: u16 = 0;
const OPT_COMMENT: u16 = 1;
const SHB_OS: u16 = 3;
const SHB_USERAPPL: u16 = 4;
const IF_NAME: u16 = 2;
const IF_DESCRIPTION: u16 = 3;
const IF_TSRESOL: u16 = 9;
const ISB_STARTTIME: u16 = 2;
const ISB_ENDTIME: u16 = 3;
const ISB_IFRECV: u16 = 4;
const ISB_IFDROP: u16 = 5;

/// An option's value is at most 65535 bytes; a longer comment is cut at a
/// character boundary rather than refused.
const OPT_MAX: usize = u16::MAX as usize;

/// One block under construction: body bytes between the type/length
/// header and the trailing length.
struct Block {
    kind: u32,
    body: Vec<u8>,
}

impl Block {
    fn new(kind: u32) -> Self {
        Self { kind, body: Vec::with_capacity(64) }
    }

    fn u16(&mut self, v: u16) -> &mut Self {
        self.body.extend_from_slice(&v.to_le_bytes());
        self
    }

    fn u32(&mut self, v: u32) -> &mut Self {
        self.body.extend_from_slice(&v.to_le_bytes());
        self
    }

    fn u64(&mut self, v: u64) -> &mut Self {
        self.body.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// Bytes padded to a multiple of 4.
    fn padded(&mut self, b: &[u8]) -> &mut Self {
        self.body.extend_from_slice(b);
        self.body.resize(self.body.len().next_multiple_of(4), 0);
        self
    }

    fn option(&mut self, code: u16, value: &[u8]) -> &mut Self {
        let value = &value[..value.len().min(OPT_MAX)];
        self.u16(code).u16(value.len() as u16).padded(value)
    }

    /// A UTF-8 option (comments, names): cut at a character boundary;
    /// none at all when empty.
    fn text(&mut self, code: u16, s: &str) -> &mut Self {
        if s.is_empty() {
            return self;
        }
        let mut end = s.len().min(OPT_MAX);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        self.option(code, &s.as_bytes()[..end])
    }

    fn end_options(&mut self) -> &mut Self {
        self.u16(OPT_END).u16(0)
    }

    fn write(&self, out: &mut impl Write) -> Result<(), PcapngError> {
        let total = (self.body.len() + 12) as u32;
        let mut buf = Vec::with_capacity(total as usize);
        buf.extend_from_slice(&self.kind.to_le_bytes());
        buf.extend_from_slice(&total.to_le_bytes());
        buf.extend_from_slice(&self.body);
        buf.extend_from_slice(&total.to_le_bytes());
        out.write_all(&buf).map_err(PcapngError::Write)
    }
}

/// What the section header says about how the file was made.
pub struct SectionInfo<'a> {
    pub os: &'a str,
    pub userappl: &'a str,
    pub comment: &'a str,
}

pub fn section_header(out: &mut impl Write, info: &SectionInfo<'_>) -> Result<(), PcapngError> {
    let mut b = Block::new(SHB);
    // Version 1.0, section length unknown (-1): the file is streamed.
    b.u32(BYTE_ORDER_MAGIC).u16(1).u16(0).u64(u64::MAX);
    b.text(OPT_COMMENT, info.comment).text(SHB_OS, info.os).text(SHB_USERAPPL, info.userappl).end_options();
    b.write(out)
}

pub struct Interface<'a> {
    pub linktype: u16,
    pub snaplen: u32,
    pub name: &'a str,
    pub description: &'a str,
}

/// Timestamps are in nanoseconds (if_tsresol 9), as the kernel gives them.
pub fn interface(out: &mut impl Write, i: &Interface<'_>) -> Result<(), PcapngError> {
    let mut b = Block::new(IDB);
    b.u16(i.linktype).u16(0).u32(i.snaplen);
    b.text(IF_NAME, i.name).text(IF_DESCRIPTION, i.description).option(IF_TSRESOL, &[9]).end_options();
    b.write(out)
}

pub struct Packet<'a> {
    pub interface: u32,
    /// Nanoseconds since the epoch.
    pub ts_ns: u64,
    /// The bytes captured: headers and as much payload as was copied.
    pub data: &'a [u8],
    /// The length the packet had on the wire: less than `data` only never.
    pub orig_len: u32,
    pub comment: &'a str,
}

pub fn packet(out: &mut impl Write, p: &Packet<'_>) -> Result<(), PcapngError> {
    let mut b = Block::new(EPB);
    b.u32(p.interface).u32((p.ts_ns >> 32) as u32).u32(p.ts_ns as u32);
    b.u32(p.data.len() as u32).u32(p.orig_len.max(p.data.len() as u32)).padded(p.data);
    b.text(OPT_COMMENT, p.comment).end_options().write(out)
}

pub struct Statistics<'a> {
    pub interface: u32,
    pub ts_ns: u64,
    pub start_ns: u64,
    pub end_ns: Option<u64>,
    pub received: u64,
    pub dropped: u64,
    pub comment: &'a str,
}

pub fn statistics(out: &mut impl Write, s: &Statistics<'_>) -> Result<(), PcapngError> {
    let ts = |t: u64| [((t >> 32) as u32).to_le_bytes(), (t as u32).to_le_bytes()].concat();
    let mut b = Block::new(ISB);
    b.u32(s.interface).u32((s.ts_ns >> 32) as u32).u32(s.ts_ns as u32);
    b.text(OPT_COMMENT, s.comment);
    b.option(ISB_STARTTIME, &ts(s.start_ns));
    if let Some(end) = s.end_ns {
        b.option(ISB_ENDTIME, &ts(end));
    }
    b.option(ISB_IFRECV, &s.received.to_le_bytes()).option(ISB_IFDROP, &s.dropped.to_le_bytes());
    b.end_options().write(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn section_header_bytes() {
        let mut out = Vec::new();
        section_header(&mut out, &SectionInfo { os: "L", userappl: "ut 1", comment: "" }).unwrap();
        #[rustfmt::skip]
        let want: &[u8] = &[
            0x0A, 0x0D, 0x0D, 0x0A, 48, 0, 0, 0,
            0x4D, 0x3C, 0x2B, 0x1A, 1, 0, 0, 0,
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            3, 0, 1, 0, b'L', 0, 0, 0,
            4, 0, 4, 0, b'u', b't', b' ', b'1',
            0, 0, 0, 0,
            48, 0, 0, 0,
        ];
        assert_eq!(out, want);
    }

    #[test]
    fn packet_bytes_keep_both_lengths_and_pad() {
        let mut out = Vec::new();
        let p = Packet { interface: 1, ts_ns: 0x1_0000_0002, data: b"abcde", orig_len: 900, comment: "hi" };
        packet(&mut out, &p).unwrap();
        #[rustfmt::skip]
        let want: &[u8] = &[
            6, 0, 0, 0, 52, 0, 0, 0,
            1, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0,
            5, 0, 0, 0, 0x84, 3, 0, 0,
            b'a', b'b', b'c', b'd', b'e', 0, 0, 0,
            1, 0, 2, 0, b'h', b'i', 0, 0,
            0, 0, 0, 0,
            52, 0, 0, 0,
        ];
        assert_eq!(out, want);
    }

    #[test]
    fn interface_and_statistics_bytes() {
        let mut out = Vec::new();
        interface(&mut out, &Interface { linktype: 101, snaplen: 65535, name: "u", description: "" }).unwrap();
        #[rustfmt::skip]
        let want: &[u8] = &[
            1, 0, 0, 0, 40, 0, 0, 0,
            101, 0, 0, 0, 0xff, 0xff, 0, 0,
            2, 0, 1, 0, b'u', 0, 0, 0,
            9, 0, 1, 0, 9, 0, 0, 0,
            0, 0, 0, 0,
            40, 0, 0, 0,
        ];
        assert_eq!(out, want);
        out.clear();
        let s = Statistics { interface: 0, ts_ns: 5, start_ns: 1, end_ns: None, received: 3, dropped: 2, comment: "" };
        statistics(&mut out, &s).unwrap();
        assert_eq!(&out[..4], &[5, 0, 0, 0]);
        assert_eq!(out.len(), 12 + 12 + (4 + 8) * 3 + 4);
        // isb_ifdrop, last before the end of options.
        assert_eq!(&out[out.len() - 20..out.len() - 8], &[5, 0, 8, 0, 2, 0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn a_long_comment_is_cut_at_a_character_boundary() {
        let mut out = Vec::new();
        let long = "é".repeat(40_000);
        let p = Packet { interface: 0, ts_ns: 0, data: b"", orig_len: 0, comment: &long };
        packet(&mut out, &p).unwrap();
        let len = u16::from_le_bytes([out[30], out[31]]) as usize;
        assert_eq!(len, 65534);
        assert!(std::str::from_utf8(&out[32..32 + len]).is_ok());
    }
}
