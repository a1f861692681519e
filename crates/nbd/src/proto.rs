//! The wire format of the NBD protocol (NetworkBlockDevice/nbd `doc/proto.md`): the constants this
//! client uses and the fixed-size headers, encoded and decoded without I/O so they are unit-tested
//! byte for byte. Every number is big-endian on the wire.

/// `NBDMAGIC`, the first 8 bytes a server sends.
pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`: the newstyle handshake's magic, and the prefix of every option a client sends.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// The magic of every option reply.
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// The magic of every request.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// The magic of a simple reply.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// The magic of a structured reply chunk.
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

/// Handshake flags (server) and client flags.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
/// The server may omit the 124 zero bytes of `NBD_OPT_EXPORT_NAME`'s reply.
pub const FLAG_NO_ZEROES: u16 = 1 << 1;

/// Transmission flags of an export.
pub const FLAG_READ_ONLY: u16 = 1 << 1;
/// The export takes `NBD_CMD_FLUSH`.
pub const FLAG_SEND_FLUSH: u16 = 1 << 2;
/// The export takes `NBD_CMD_WRITE_ZEROES`.
pub const FLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;

/// Options.
pub const OPT_ABORT: u32 = 2;
/// Enter transmission on an export, with the information asked for.
pub const OPT_GO: u32 = 7;
/// Ask for structured replies.
pub const OPT_STRUCTURED_REPLY: u32 = 8;
/// Select the metadata contexts `NBD_CMD_BLOCK_STATUS` reports.
pub const OPT_SET_META_CONTEXT: u32 = 10;

/// Option replies.
pub const REP_ACK: u32 = 1;
/// One piece of information about the export (`NBD_OPT_GO`).
pub const REP_INFO: u32 = 3;
/// One selected metadata context (`NBD_OPT_SET_META_CONTEXT`).
pub const REP_META_CONTEXT: u32 = 4;
/// Error replies have bit 31 set.
pub const REP_FLAG_ERROR: u32 = 1 << 31;

/// `NBD_REP_INFO` types.
pub const INFO_EXPORT: u16 = 0;
/// The export's minimum, preferred and maximum block sizes.
pub const INFO_BLOCK_SIZE: u16 = 3;

/// Commands.
pub const CMD_READ: u16 = 0;
/// Write the request's payload.
pub const CMD_WRITE: u16 = 1;
/// End the session.
pub const CMD_DISC: u16 = 2;
/// Make every completed write durable.
pub const CMD_FLUSH: u16 = 3;
/// Write zeroes without a payload.
pub const CMD_WRITE_ZEROES: u16 = 6;
/// Report extents of the negotiated metadata contexts.
pub const CMD_BLOCK_STATUS: u16 = 7;

/// Command flags: `NBD_CMD_WRITE_ZEROES` must allocate (no hole may be punched).
pub const CMD_FLAG_NO_HOLE: u16 = 1 << 1;

/// Structured reply chunk flag: the last chunk of a reply.
pub const REPLY_FLAG_DONE: u16 = 1 << 0;
/// Structured reply chunk types.
pub const REPLY_TYPE_NONE: u16 = 0;
/// Data at an offset.
pub const REPLY_TYPE_OFFSET_DATA: u16 = 1;
/// A hole (reads as zeroes) at an offset.
pub const REPLY_TYPE_OFFSET_HOLE: u16 = 2;
/// Extents of one metadata context.
pub const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
/// An error for the whole request.
pub const REPLY_TYPE_ERROR: u16 = (1 << 15) + 1;
/// An error at an offset of the request.
pub const REPLY_TYPE_ERROR_OFFSET: u16 = (1 << 15) + 2;

/// `base:allocation`: the extent is a hole (not allocated).
pub const STATE_HOLE: u32 = 1 << 0;
/// `base:allocation`: the extent reads as zeroes.
pub const STATE_ZERO: u32 = 1 << 1;

/// An option as the client sends it: `IHAVEOPT`, the option, the data's length, the data.
pub fn option(option: u32, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + data.len());
    out.extend_from_slice(&IHAVEOPT.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
    out
}

/// `NBD_OPT_GO`'s data: the export name and the information asked for.
pub fn go_data(export: &str, infos: &[u16]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(export.len() as u32).to_be_bytes());
    out.extend_from_slice(export.as_bytes());
    out.extend_from_slice(&(infos.len() as u16).to_be_bytes());
    for info in infos {
        out.extend_from_slice(&info.to_be_bytes());
    }
    out
}

/// `NBD_OPT_SET_META_CONTEXT`'s data: the export name and the queries.
pub fn meta_context_data(export: &str, queries: &[&str]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(export.len() as u32).to_be_bytes());
    out.extend_from_slice(export.as_bytes());
    out.extend_from_slice(&(queries.len() as u32).to_be_bytes());
    for q in queries {
        out.extend_from_slice(&(q.len() as u32).to_be_bytes());
        out.extend_from_slice(q.as_bytes());
    }
    out
}

/// The header of an option reply (20 bytes), before its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionReply {
    /// The option it answers.
    pub option: u32,
    /// `NBD_REP_*`.
    pub reply: u32,
    /// The length of the data that follows.
    pub length: u32,
}

impl OptionReply {
    /// Its size on the wire.
    pub const SIZE: usize = 20;

    /// Decodes a header; `None` when the magic is wrong.
    pub fn decode(b: &[u8; Self::SIZE]) -> Option<Self> {
        (u64_at(b, 0) == OPTION_REPLY_MAGIC).then(|| Self {
            option: u32_at(b, 8),
            reply: u32_at(b, 12),
            length: u32_at(b, 16),
        })
    }
}

/// A request's header (28 bytes), before a write's payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// `NBD_CMD_FLAG_*`.
    pub flags: u16,
    /// `NBD_CMD_*`.
    pub command: u16,
    /// What the reply carries back to name its request.
    pub cookie: u64,
    /// Where in the export.
    pub offset: u64,
    /// How many bytes.
    pub length: u32,
}

impl Request {
    /// Its size on the wire.
    pub const SIZE: usize = 28;

    /// Encodes the header.
    pub fn encode(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        b[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        b[4..6].copy_from_slice(&self.flags.to_be_bytes());
        b[6..8].copy_from_slice(&self.command.to_be_bytes());
        b[8..16].copy_from_slice(&self.cookie.to_be_bytes());
        b[16..24].copy_from_slice(&self.offset.to_be_bytes());
        b[24..28].copy_from_slice(&self.length.to_be_bytes());
        b
    }
}

/// The header of a structured reply chunk, after its 4-byte magic (16 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk {
    /// `NBD_REPLY_FLAG_*`.
    pub flags: u16,
    /// `NBD_REPLY_TYPE_*`.
    pub kind: u16,
    /// The request it answers.
    pub cookie: u64,
    /// The payload's length.
    pub length: u32,
}

impl Chunk {
    /// Its size on the wire after the magic.
    pub const SIZE: usize = 16;

    /// Decodes the header that follows [`STRUCTURED_REPLY_MAGIC`].
    pub fn decode(b: &[u8; Self::SIZE]) -> Self {
        Self {
            flags: u16_at(b, 0),
            kind: u16_at(b, 2),
            cookie: u64_at(b, 4),
            length: u32_at(b, 12),
        }
    }

    /// Whether this is the reply's last chunk.
    pub fn done(&self) -> bool {
        self.flags & REPLY_FLAG_DONE != 0
    }
}

/// A big-endian u16 at `at` of `b`.
pub fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// A big-endian u32 at `at` of `b`.
pub fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// A big-endian u64 at `at` of `b`.
pub fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_header_is_the_spec_s_28_bytes() {
        let r = Request {
            flags: CMD_FLAG_NO_HOLE,
            command: CMD_WRITE_ZEROES,
            cookie: 0x0102_0304_0506_0708,
            offset: 0x1000,
            length: 0x2000,
        };
        assert_eq!(
            r.encode().to_vec(),
            [
                0x25, 0x60, 0x95, 0x13, 0, 2, 0, 6, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 0, 0, 0, 0x10,
                0, 0, 0, 0x20, 0
            ]
        );
    }

    #[test]
    fn options_and_their_replies() {
        let go = option(OPT_GO, &go_data("", &[INFO_BLOCK_SIZE]));
        assert_eq!(&go[..8], b"IHAVEOPT");
        assert_eq!(u32_at(&go, 8), OPT_GO);
        assert_eq!(u32_at(&go, 12), 8, "name length, name, count, one info");
        assert_eq!(&go[16..], [0, 0, 0, 0, 0, 1, 0, 3]);

        let meta = meta_context_data("x", &["base:allocation"]);
        assert_eq!(meta.len(), 4 + 1 + 4 + 4 + 15);

        let mut b = [0u8; OptionReply::SIZE];
        b[..8].copy_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
        b[8..12].copy_from_slice(&OPT_GO.to_be_bytes());
        b[12..16].copy_from_slice(&(REP_FLAG_ERROR | 1).to_be_bytes());
        b[16..20].copy_from_slice(&7u32.to_be_bytes());
        let r = OptionReply::decode(&b).unwrap();
        assert_eq!(
            (r.option, r.reply, r.length),
            (OPT_GO, REP_FLAG_ERROR | 1, 7)
        );
        b[0] ^= 1;
        assert_eq!(OptionReply::decode(&b), None, "a wrong magic");
    }

    #[test]
    fn a_chunk_header() {
        let mut b = [0u8; Chunk::SIZE];
        b[0..2].copy_from_slice(&REPLY_FLAG_DONE.to_be_bytes());
        b[2..4].copy_from_slice(&REPLY_TYPE_BLOCK_STATUS.to_be_bytes());
        b[4..12].copy_from_slice(&9u64.to_be_bytes());
        b[12..16].copy_from_slice(&20u32.to_be_bytes());
        let c = Chunk::decode(&b);
        assert!(c.done());
        assert_eq!(
            (c.kind, c.cookie, c.length),
            (REPLY_TYPE_BLOCK_STATUS, 9, 20)
        );
        assert_eq!(REPLY_TYPE_ERROR, 32769);
        assert_eq!(NBDMAGIC.to_be_bytes(), *b"NBDMAGIC");
    }
}
