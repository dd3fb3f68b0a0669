//! The hash chain and the exact bytes of one log line.
//!
//! A line is `{"seq":N,"prev":"<hex>","hash":"<hex>","record":R}` + `\n`, where `R` is the
//! record's compact JSON. `hash = SHA-256(prev ‖ seq as 8 bytes big-endian ‖ R)` over the raw
//! 32 bytes of `prev` and the bytes of `R` exactly as they stand in the line. Hashing the
//! stored bytes (rather than a re-serialization) means verify needs no JSON parser for the
//! record and any byte changed in it shows. The envelope is parsed by [`parse_line`], which
//! accepts exactly the layout the writer produces — so each valid line has one spelling.

use aws_lc_rs::digest;
use std::fmt;

/// A SHA-256 value: an entry's hash, or the `prev` of the entry after it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Hash(pub [u8; 32]);

impl Hash {
    /// The `prev` of the first entry of a log.
    pub const GENESIS: Hash = Hash([0; 32]);

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 lower-case hex digits (the only spelling the log uses).
    pub fn from_hex(text: &str) -> Option<Hash> {
        parse_hex32(text.as_bytes())
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({})", self.to_hex())
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// The hash of the entry with sequence number `seq`, record bytes `record`, after `prev`.
pub fn entry_hash(prev: &Hash, seq: u64, record: &[u8]) -> Hash {
    let mut context = digest::Context::new(&digest::SHA256);
    context.update(&prev.0);
    context.update(&seq.to_be_bytes());
    context.update(record);
    let mut out = [0; 32];
    out.copy_from_slice(context.finish().as_ref());
    Hash(out)
}

const SEQ: &[u8] = b"{\"seq\":";
const PREV: &[u8] = b",\"prev\":\"";
const HASH: &[u8] = b"\",\"hash\":\"";
const RECORD: &[u8] = b"\",\"record\":";

/// Appends the line for an entry (with its newline) to `out`, returning the entry's hash.
pub fn write_line(out: &mut Vec<u8>, prev: &Hash, seq: u64, record: &[u8]) -> Hash {
    let hash = entry_hash(prev, seq, record);
    out.reserve(record.len() + 180);
    out.extend_from_slice(SEQ);
    out.extend_from_slice(seq.to_string().as_bytes());
    out.extend_from_slice(PREV);
    push_hex(out, &prev.0);
    out.extend_from_slice(HASH);
    push_hex(out, &hash.0);
    out.extend_from_slice(RECORD);
    out.extend_from_slice(record);
    out.extend_from_slice(b"}\n");
    hash
}

/// One line taken apart (without checking its hash; see [`Line::computed_hash`]).
#[derive(Debug, Clone, Copy)]
pub struct Line<'a> {
    pub seq: u64,
    pub prev: Hash,
    pub hash: Hash,
    pub record: &'a [u8],
}

impl Line<'_> {
    pub fn computed_hash(&self) -> Hash {
        entry_hash(&self.prev, self.seq, self.record)
    }

    /// Whether the line's stored hash is the hash of its own contents.
    pub fn is_self_consistent(&self) -> bool {
        self.computed_hash() == self.hash
    }
}

/// Takes a line (without its `\n`) apart; the error says what does not match the layout.
pub fn parse_line(line: &[u8]) -> Result<Line<'_>, &'static str> {
    let rest = line.strip_prefix(SEQ).ok_or("it does not start with {\"seq\":")?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    let seq = parse_seq(&rest[..digits]).ok_or("its seq is not a plain decimal number")?;
    let rest = rest[digits..].strip_prefix(PREV).ok_or("\"prev\" does not follow seq")?;
    let (prev, rest) = rest.split_at_checked(64).ok_or("it ends inside \"prev\"")?;
    let prev = parse_hex32(prev).ok_or("\"prev\" is not 64 lower-case hex digits")?;
    let rest = rest.strip_prefix(HASH).ok_or("\"hash\" does not follow prev")?;
    let (hash, rest) = rest.split_at_checked(64).ok_or("it ends inside \"hash\"")?;
    let hash = parse_hex32(hash).ok_or("\"hash\" is not 64 lower-case hex digits")?;
    let rest = rest.strip_prefix(RECORD).ok_or("\"record\" does not follow hash")?;
    let record = rest.strip_suffix(b"}").ok_or("it does not end with }")?;
    if !(record.starts_with(b"{") && record.ends_with(b"}")) {
        return Err("its record is not a JSON object");
    }
    Ok(Line { seq, prev, hash, record })
}

/// Decimal without sign or leading zeros, fitting in u64.
fn parse_seq(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 20 || (digits.len() > 1 && digits[0] == b'0') {
        return None;
    }
    digits.iter().try_fold(0u64, |n, d| n.checked_mul(10)?.checked_add(u64::from(d - b'0')))
}

fn parse_hex32(text: &[u8]) -> Option<Hash> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    if text.len() != 64 {
        return None;
    }
    let mut out = [0; 32];
    for (byte, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        *byte = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(Hash(out))
}

fn push_hex(out: &mut Vec<u8>, bytes: &[u8; 32]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)]);
        out.push(DIGITS[usize::from(b & 0xf)]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_line_parses_back_and_checks() {
        let mut out = Vec::new();
        let record = br#"{"a":1}"#;
        let hash = write_line(&mut out, &Hash::GENESIS, 1, record);
        assert_eq!(out.last(), Some(&b'\n'));
        let line = parse_line(&out[..out.len() - 1]).unwrap();
        assert_eq!((line.seq, line.prev, line.hash, line.record), (1, Hash::GENESIS, hash, &record[..]));
        assert!(line.is_self_consistent());
        // The definition, spelled out: SHA-256(prev ‖ seq (u64 BE) ‖ record bytes).
        let mut message = vec![0u8; 32];
        message.extend_from_slice(&1u64.to_be_bytes());
        message.extend_from_slice(record);
        assert_eq!(hash.to_hex(), crate::record::sha256_hex(&message));
    }

    #[test]
    fn only_the_exact_layout_parses() {
        let mut out = Vec::new();
        write_line(&mut out, &Hash::GENESIS, 7, br#"{"a":1}"#);
        let good = String::from_utf8(out[..out.len() - 1].to_vec()).unwrap();
        for bad in [
            good.replace("\"seq\":7", "\"seq\":07"),
            good.replace("\"seq\":7", "\"seq\": 7"),
            good.replace("\"seq\":7", "\"seq\":99999999999999999999"),
            good.replacen("00", "0A", 1),
            good.replace("\"prev\"", "\"Prev\""),
            good[..good.len() - 1].to_string(),
            good.replace("{\"a\":1}", "[1]"),
            format!("{good} "),
        ] {
            assert!(parse_line(bad.as_bytes()).is_err(), "{bad}");
        }
        assert_eq!(parse_seq(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_seq(b"0"), Some(0));
    }
}
